"""The read model: what jobq recorded, read back the same way by every reader.

The HTTP API, the metrics, the demo, the chaos probes and the SDK all answer "how long did
recovery take", "what happened to this job" and "what is in the dead-letter stream" with these
modules. It depends on the wire contract and NATS only, so ``submitter`` and ``workers`` may use
it too:

* ``recovery``    -- node failures and the time until the lost attempts' replacements ran;
* ``retries``     -- retries per reason over a time window;
* ``events``      -- a job's stored events (stream JOBQ_EVENTS);
* ``deadletters`` -- dead letters and the originals they name (stream JOBQ_DEAD, object store);
* ``backlog``     -- submissions not yet taken in and the dead-letter count (stream info);
* ``times``       -- how the read model writes times (ISO 8601, as ``datetime.isoformat``).
"""
