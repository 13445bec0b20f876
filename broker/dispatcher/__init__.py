"""The dispatcher: a level-triggered reconcile loop from job records to pods."""
