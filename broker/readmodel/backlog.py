"""What waits in JetStream: submissions not yet taken in per queue, and the dead-letter count."""

from __future__ import annotations

import asyncio
import dataclasses

from nats.js import JetStreamContext

from broker import contract


@dataclasses.dataclass(frozen=True, slots=True)
class Backlog:
    pending: dict[str, int]
    """Submissions not yet acked by intake, per queue (JOBQ_SUBMIT work-queue stream)."""
    dead_letters: int
    """Messages in the dead-letter stream."""


async def read(js: JetStreamContext, *, timeout_s: float = 2) -> Backlog:
    """Both figures from stream info (raises what NATS raises, or TimeoutError)."""
    info = await asyncio.wait_for(
        js.stream_info(contract.STREAM_SUBMIT, subjects_filter=contract.SUBMIT_WILDCARD), timeout_s
    )
    subjects: dict[str, int] = info.state.subjects or {}
    pending = {subject.split(".", 2)[2]: int(n) for subject, n in subjects.items() if subject.count(".") >= 2}
    dead = await asyncio.wait_for(js.stream_info(contract.STREAM_DEAD), timeout_s)
    return Backlog(pending=pending, dead_letters=int(dead.state.messages or 0))
