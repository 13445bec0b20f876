"""What an ended attempt did with checkpoints, and the work a disrupted one threw away. Pure.

When a pass ends an attempt (decide() made it final), the reconciler reads the job's checkpoint
pointer once and stamps the ended attempt before the record is written, in the same
compare-and-set: ``checkpoints`` (``contract.attempt_checkpoints``) and, for a disruption,
``work_lost_s`` = its last sign of life minus the start of the work it would have to redo
(docs/design/checkpoints-dispatcher.md). A pass that fails before the write is simply decided again.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from broker import contract


def newly_ended(before: contract.JobRecord, after: contract.JobRecord) -> tuple[int, ...]:
    """Attempts final in ``after`` that were not in ``before``."""
    was_final = {a.number for a in before.attempts if a.state.is_final}
    return tuple(a.number for a in after.attempts if a.state.is_final and a.number not in was_final)


def last_sign(attempt: contract.Attempt, *, pod_beat: dt.datetime | None, node_beat: dt.datetime | None,
              checkpoint_at: dt.datetime | None = None) -> dt.datetime | None:
    """The last time the attempt is known to have been working: the later of its newest
    checkpoint and its pod's last heartbeat (both by the pod's own clock) or, without one, its
    node's; with no evidence at all, when it was ended. The pod may have worked on after it for
    up to one heartbeat interval (about 1 s), which the figure leaves out: a lower bound."""
    signs = [t for t in (pod_beat or node_beat, checkpoint_at) if t is not None]
    return max(signs) if signs else attempt.finished_at


def work_lost_s(attempt: contract.Attempt, pointer: contract.CheckpointPointer | None, *,
                pod_beat: dt.datetime | None = None, node_beat: dt.datetime | None = None) -> float | None:
    """Seconds of work ``attempt`` threw away: from its newest checkpoint (else from when it took
    the pointer, else from its start) to its last sign of life, at least 0; None if it never
    started (and never took the pointer)."""
    owns = pointer is not None and pointer.owner == attempt.number
    done = contract.attempt_checkpoints(pointer, attempt.number)
    since: dt.datetime | None
    if done is not None and done.written and done.at is not None:
        since = done.at
    elif owns and pointer is not None and pointer.resumed_at is not None:
        since = pointer.resumed_at
    else:
        since = attempt.started_at
    sign = last_sign(attempt, pod_beat=pod_beat, node_beat=node_beat,
                     checkpoint_at=done.at if done is not None and done.written else None)
    if since is None or sign is None:
        return None
    return max(0.0, round((sign - since).total_seconds(), 3))


def stamp(after: contract.JobRecord, ended: tuple[int, ...], pointer: contract.CheckpointPointer | None, *,
          pod_beats: Mapping[int, dt.datetime | None], node_beats: Mapping[str, dt.datetime | None]
          ) -> contract.JobRecord:
    """``after`` with attempts ``ended`` stamped from ``pointer``; ``pod_beats``: attempt -> its last
    heartbeat as the dispatcher received it; ``node_beats``: node -> its last heartbeat."""
    attempts = []
    for attempt in after.attempts:
        if attempt.number in ended:
            update: dict[str, object] = {"checkpoints": contract.attempt_checkpoints(pointer, attempt.number)}
            if attempt.reason is not None and attempt.reason.is_disruption:
                update["work_lost_s"] = work_lost_s(
                    attempt, pointer, pod_beat=pod_beats.get(attempt.number),
                    node_beat=node_beats.get(attempt.node) if attempt.node else None)
            attempt = attempt.model_copy(update=update)
        attempts.append(attempt)
    return after.model_copy(update={"attempts": tuple(attempts)})
