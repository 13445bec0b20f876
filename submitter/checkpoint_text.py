"""How `jobq status` words checkpoints and work lost (docs/design/checkpoints.md).

    checkpoint: step 7 at 12:00:03 (resumed from step 4 of attempt 1)
    work lost: 2.1 s
"""

from __future__ import annotations

import datetime as dt

from broker import contract


def clock(at: dt.datetime) -> str:
    """``at`` as local HH:MM:SS (one the local zone cannot hold: in ISO form)."""
    try:
        return at.astimezone().strftime("%H:%M:%S")
    except (OverflowError, ValueError, OSError):
        return at.isoformat()


def checkpoint_text(checkpoints: contract.AttemptCheckpoints) -> str:
    """An attempt's checkpoints in a few words: its newest step and when, and what it resumed from."""
    if checkpoints.written and checkpoints.step is not None:
        text = f"step {checkpoints.step}" + (f" at {clock(checkpoints.at)}" if checkpoints.at else "")
    else:
        text = "none written"
    if checkpoints.resumed_step is not None:
        source = checkpoints.resumed_from_attempt
        text += f" (resumed from step {checkpoints.resumed_step}" + (
            f" of attempt {source})" if source is not None else ")")
    return text


def work_lost_text(seconds: float) -> str:
    return f"{seconds:.1f} s"


def attempt_checkpoint_lines(attempt: contract.Attempt) -> list[str]:
    """`jobq status` lines under an attempt: its checkpoints and, when disrupted, the work lost."""
    lines = []
    if attempt.checkpoints is not None:
        lines.append(f"    checkpoint: {checkpoint_text(attempt.checkpoints)}")
    if attempt.work_lost_s is not None:
        lines.append(f"    work lost: {work_lost_text(attempt.work_lost_s)}")
    return lines
