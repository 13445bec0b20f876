"""Dead letters (stream JOBQ_DEAD, read by sequence) and the originals they name (object store
jobq_dead). A stored message that is not a dead letter is skipped."""

from __future__ import annotations

import dataclasses

import nats.js.errors
from nats.js import JetStreamContext
from pydantic import ValidationError

from broker import contract


@dataclasses.dataclass(frozen=True, slots=True)
class StoredDeadLetter:
    seq: int
    letter: contract.DeadLetter


def _parse(data: bytes | None) -> contract.DeadLetter | None:
    if not data:
        return None
    try:
        return contract.DeadLetter.model_validate_json(data)
    except ValidationError:
        return None


async def get(js: JetStreamContext, seq: int) -> contract.DeadLetter | None:
    """The dead letter stored under ``seq``, or None (no such message, or not a letter)."""
    try:
        raw = await js.get_msg(contract.STREAM_DEAD, seq)
    except nats.js.errors.NotFoundError:
        return None
    return _parse(raw.data)


async def newest(
    js: JetStreamContext, *, limit: int, offset: int = 0, reason: str | None = None
) -> tuple[list[StoredDeadLetter], int]:
    """Newest dead letters first (optionally of one reason), and how many the stream holds."""
    try:
        info = await js.stream_info(contract.STREAM_DEAD)
    except nats.js.errors.NotFoundError:
        return [], 0
    found: list[StoredDeadLetter] = []
    skipped = 0
    seq = info.state.last_seq
    while seq >= max(info.state.first_seq, 1) and len(found) < limit:
        try:
            raw = await js.get_msg(contract.STREAM_DEAD, seq)
        except nats.js.errors.NotFoundError:
            seq -= 1
            continue
        seq -= 1
        letter = _parse(raw.data)
        if letter is None or (reason is not None and letter.reason.value != reason):
            continue
        if skipped < offset:
            skipped += 1
            continue
        found.append(StoredDeadLetter(seq=raw.seq or 0, letter=letter))
    return found, int(info.state.messages or 0)


async def original(js: JetStreamContext, letter: contract.DeadLetter) -> bytes | None:
    """The whole original message a dead letter is about: its inline ``payload`` when it has
    one, else the copy in object store ``jobq_dead``; None when the letter names none or the
    copy expired (with the letter's stream, after 30 days)."""
    if letter.payload is not None:
        return letter.payload.encode()
    if letter.original is None:
        return None
    try:
        originals = await js.object_store(contract.OBJECT_STORE_DEAD)
        result = await originals.get(letter.original)
    except nats.js.errors.NotFoundError:
        return None
    return bytes(result.data or b"")
