"""jobq broker: the dispatcher service, job state, retries, rescheduling and the HTTP API."""
