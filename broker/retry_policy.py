"""When to retry a failed attempt, and after how long.

Two budgets, as Kubernetes' pod failure policy has them: application failures (non-zero exit,
out of memory, timeout, a backend that refused the pod) count against ``max_attempts`` and are
retried after an exponential backoff with full jitter; infrastructure disruptions (node lost,
heartbeat lost, pod evicted or deleted) count against ``max_disruptions`` and are retried at once.
A non-retryable exit code, a command that cannot be started or a cancellation ends the job
without a retry.
"""

from __future__ import annotations

import dataclasses
import random

from broker import contract

DEFAULT_POLICY = contract.RetryPolicy()
_NEVER_RETRIED = frozenset(
    {
        contract.FailureReason.NON_RETRYABLE,
        contract.FailureReason.START_ERROR,
        contract.FailureReason.CANCELLED,
    }
)


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    retry: bool
    delay_s: float
    """Seconds to wait before the next attempt (0 for disruptions)."""
    why: str
    """Why the job gives up, when it does."""


def backoff_delay(failures: int, *, policy: contract.RetryPolicy, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**(failures-1))]."""
    ceiling = min(policy.backoff_cap_s, policy.backoff_base_s * 2 ** max(failures - 1, 0))
    return rng.uniform(0, ceiling)


def judge(
    reason: contract.FailureReason,
    *,
    app_failures: int,
    disruptions: int,
    policy: contract.RetryPolicy,
    rng: random.Random,
) -> Verdict:
    """Decide after a failure; ``app_failures``/``disruptions`` already include this one."""
    if reason in _NEVER_RETRIED:
        return Verdict(retry=False, delay_s=0, why=f"{reason} failures are not retried")
    if reason.is_disruption:
        if disruptions > policy.max_disruptions:
            return Verdict(
                retry=False,
                delay_s=0,
                why=f"{disruptions} disruptions exceed max_disruptions={policy.max_disruptions}",
            )
        return Verdict(retry=True, delay_s=0, why="")
    if app_failures >= policy.max_attempts:
        return Verdict(
            retry=False,
            delay_s=0,
            why=f"{app_failures} failed attempts reached max_attempts={policy.max_attempts}",
        )
    return Verdict(retry=True, delay_s=backoff_delay(app_failures, policy=policy, rng=rng), why="")
