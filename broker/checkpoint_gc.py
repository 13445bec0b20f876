"""Which checkpoint objects no pointer will reference again (docs/design/checkpoints-dispatcher.md). Pure.

A job's pointer only moves forward: its owner (the fencing token) never decreases, and the owner's
``seq`` only grows. So, against the current pointer ``P``, an object ``<job>/<a>/.checkpoint/<s>``
is garbage when it is not ``P.object`` and either ``a < P.owner`` (that attempt can change nothing
any more; a new owner only ever takes ``P.object`` over) or ``a == P.owner and s < P.seq`` (the
owner writes ``seq + 1`` next). Everything else may still be referenced: the owner's objects from
``P.seq`` on (one may be written right now, before its compare-and-set) and any newer attempt's.
Deleting only what is garbage under the pointer read just before (``checkpoint_store``) never
removes what a pointer references, even a pointer that moved back or names nonsense.
"""

from __future__ import annotations

from collections.abc import Iterable

from broker import contract


def parse(job_id: str, name: str) -> tuple[int, int] | None:
    """(attempt, seq) of a checkpoint object of ``job_id``; None for any other name."""
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != job_id or parts[2] != contract.CHECKPOINT_SEGMENT:
        return None
    if not (parts[1].isdigit() and parts[3].isdigit()):
        return None
    attempt, seq = int(parts[1]), int(parts[3])
    return (attempt, seq) if attempt >= 1 and seq >= 1 else None


def collectable(pointer: contract.CheckpointPointer, job_id: str, name: str) -> bool:
    """Whether no pointer will reference ``name`` again, given the job's current ``pointer``."""
    where = parse(job_id, name)
    if where is None or name == pointer.object:
        return False
    attempt, seq = where
    return attempt < pointer.owner or (attempt == pointer.owner and seq < pointer.seq)


def _keep(pointer: contract.CheckpointPointer, job_id: str, names: Iterable[str]) -> list[str]:
    return [n for n in dict.fromkeys(names) if collectable(pointer, job_id, n)]


def superseded(job_id: str, before: contract.CheckpointPointer | None,
               after: contract.CheckpointPointer) -> list[str]:
    """What a pointer change from ``before`` (None: not seen) to ``after`` made garbage: the object
    ``before`` referenced, the owner's objects since ``before`` (only the one just below ``after``
    when ``before`` is unknown), and the orphan a superseded owner may have put before its failed
    compare-and-set. Nothing when the pointer moved back."""
    owner = after.owner
    names: list[str] = []
    if before is not None and (owner, after.seq) < (before.owner, before.seq):
        return []  # it moved back, which no pod of the contract does: delete nothing on its word
    if before is None:
        lo = max(1, after.seq - 1)
    else:
        names.append(before.object)
        lo = before.seq if before.owner == owner else 1
        if before.owner < owner:
            names.append(contract.checkpoint_object_key(job_id, before.owner, before.seq + 1))
    names += [contract.checkpoint_object_key(job_id, owner, s) for s in range(max(lo, 1), after.seq)]
    return _keep(after, job_id, names)


def _top(attempt: contract.Attempt, pointer: contract.CheckpointPointer | None) -> int:
    """The highest seq ``attempt`` is known to have written (its summary, or the pointer it owns)."""
    written = attempt.checkpoints.written if attempt.checkpoints else 0
    owned = pointer.seq if pointer is not None and pointer.owner == attempt.number else 0
    return max(written, owned)


def at_attempt_end(record: contract.JobRecord, ended: Iterable[int],
                   pointer: contract.CheckpointPointer | None) -> list[str]:
    """What is garbage once attempts ``ended`` ended: their objects below the pointer's, and the
    newest object of each earlier attempt (a later owner no longer references it)."""
    if pointer is None:
        return []
    finished = set(ended)
    job_id = record.spec.id
    names: list[str] = []
    for attempt in record.attempts:
        top = _top(attempt, pointer)
        seqs = range(1, top + 1) if attempt.number in finished else range(top, top + 1) if top else range(0)
        names += [contract.checkpoint_object_key(job_id, attempt.number, s) for s in seqs]
    return _keep(pointer, job_id, names)


def every_object(record: contract.JobRecord, pointer: contract.CheckpointPointer | None) -> list[str]:
    """Every checkpoint object the job may have left (retention deletes them all): each attempt's
    from 1 to one past the highest it is known to have written (an object put before a failed
    compare-and-set), and the one the pointer references."""
    job_id = record.spec.id
    names = [
        contract.checkpoint_object_key(job_id, attempt.number, s)
        for attempt in record.attempts
        for s in range(1, _top(attempt, pointer) + 2)
    ]
    if pointer is not None and parse(job_id, pointer.object) is not None:
        names.append(pointer.object)
    return list(dict.fromkeys(names))
