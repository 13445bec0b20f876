"""Classify how an attempt's pod ended into one FailureReason."""

from __future__ import annotations

from broker import contract


def classify_exit(
    *, exit_code: int | None, pod_reason: str, policy: contract.RetryPolicy, has_task: bool
) -> contract.FailureReason:
    """The reason for a pod that ended in phase Failed."""
    if pod_reason == "OOMKilled":
        return contract.FailureReason.OOM
    if pod_reason == "Evicted":
        return contract.FailureReason.EVICTED
    if pod_reason in ("Killed", "Deleted"):
        return contract.FailureReason.DELETED
    if pod_reason == "DeadlineExceeded":
        return contract.FailureReason.TIMEOUT
    if pod_reason == contract.POD_REASON_START_ERROR:
        return contract.FailureReason.START_ERROR
    if exit_code is not None and exit_code in policy.non_retryable_exit_codes:
        return contract.FailureReason.NON_RETRYABLE
    if has_task and exit_code in (contract.EXIT_TASK_NOT_FOUND, contract.EXIT_BAD_ARGS):
        return contract.FailureReason.NON_RETRYABLE
    if has_task and exit_code == contract.EXIT_NATS_UNREACHABLE:
        return contract.FailureReason.HEARTBEAT_LOST
    return contract.FailureReason.APP_ERROR
