"""jobq submitter: the Python SDK (``submitter.client.JobqClient``) and the ``jobq`` CLI."""
