"""Retry policy: two budgets, full-jitter backoff, non-retryable reasons."""

from __future__ import annotations

import random

import pytest

from broker import contract, retry_policy

Reason = contract.FailureReason
POLICY = contract.RetryPolicy(max_attempts=3, backoff_base_s=2, backoff_cap_s=10, max_disruptions=2)


def judge(reason: Reason, *, app: int = 0, disruptions: int = 0) -> retry_policy.Verdict:
    return retry_policy.judge(
        reason, app_failures=app, disruptions=disruptions, policy=POLICY, rng=random.Random(7)
    )


def test_app_errors_retry_until_max_attempts() -> None:
    assert judge(Reason.APP_ERROR, app=1).retry
    assert judge(Reason.APP_ERROR, app=2).retry
    verdict = judge(Reason.APP_ERROR, app=3)
    assert not verdict.retry
    assert "max_attempts=3" in verdict.why


def test_disruptions_retry_at_once_with_their_own_cap() -> None:
    verdict = judge(Reason.NODE_LOST, app=2, disruptions=2)
    assert verdict.retry and verdict.delay_s == 0
    assert not judge(Reason.NODE_LOST, disruptions=3).retry


@pytest.mark.parametrize("reason", [Reason.NON_RETRYABLE, Reason.CANCELLED])
def test_some_reasons_never_retry(reason: Reason) -> None:
    assert not judge(reason, app=1).retry


@pytest.mark.parametrize(("failures", "ceiling"), [(1, 2), (2, 4), (3, 8), (4, 10), (9, 10)])
def test_backoff_is_full_jitter_under_a_capped_exponential(failures: int, ceiling: float) -> None:
    rng = random.Random(1)
    delays = [retry_policy.backoff_delay(failures, policy=POLICY, rng=rng) for _ in range(2000)]
    assert all(0 <= d <= ceiling for d in delays)
    assert max(delays) > ceiling * 0.95  # the whole range is used
    assert min(delays) < ceiling * 0.05
