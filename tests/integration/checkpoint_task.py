"""A task that checkpoints in a loop, for tests/integration/test_checkpoints.py (run by the real
runner as ``tests.integration.checkpoint_task:count``).

Its state is the JSON ``{"step": n, "by": [attempt, ...]}``: the step reached and, for every step,
the attempt that did it, so what a later attempt resumed from is visible in the state itself.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from workers import tasks


def count(args: dict[str, Any], ctx: tasks.TaskContext) -> dict[str, Any]:
    attempt = int(os.environ["JOBQ_ATTEMPT"])
    restored = ctx.restore()
    state: dict[str, Any] = {"step": 0, "by": []}
    if restored is not None:
        state = json.loads(restored.state)
        assert state["step"] == restored.step
    resumed = (restored.step, restored.attempt) if restored is not None else None
    while state["step"] < int(args["steps"]):
        time.sleep(float(args.get("step_s", 0.05)))
        state = {"step": state["step"] + 1, "by": [*state["by"], attempt]}
        ctx.checkpoint(json.dumps(state).encode(), step=state["step"])
    return {"resumed": resumed, "state": state}


async def acount(args: dict[str, Any], ctx: tasks.TaskContext) -> dict[str, Any]:
    """``count`` as an async task (``ctx.arestore`` / ``ctx.acheckpoint``), without pacing."""
    attempt = int(os.environ["JOBQ_ATTEMPT"])
    restored = await ctx.arestore()
    state: dict[str, Any] = json.loads(restored.state) if restored is not None else {"step": 0, "by": []}
    resumed = (restored.step, restored.attempt) if restored is not None else None
    while state["step"] < int(args["steps"]):
        state = {"step": state["step"] + 1, "by": [*state["by"], attempt]}
        await ctx.acheckpoint(json.dumps(state).encode(), step=state["step"])
    return {"resumed": resumed, "state": state}
