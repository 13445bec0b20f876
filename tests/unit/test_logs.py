"""The log service's answers (broker/dispatcher/logs.py) over the fake backend, the SDK's tail
de-duplication, and the node agent's file reads."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from broker import contract
from broker.backends import base
from broker.backends.fake import FakeBackend
from broker.dispatcher import logs
from submitter.client import unseen_tail
from workers import node_agent

NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
State = contract.AttemptState
Reason = contract.FailureReason


def attempt(n: int, state: contract.AttemptState, *, node: str | None = "fake-1",
            **fields: object) -> contract.Attempt:
    return contract.Attempt.model_validate({"number": n, "pod": contract.pod_name("j1", n), "state": state,
                                            "node": node, "created_at": NOW, **fields})


def record(*attempts: contract.Attempt,
           phase: contract.JobPhase = contract.JobPhase.RUNNING) -> contract.JobRecord:
    return contract.JobRecord(spec=contract.JobSpec(id="j1", command=("true",)), phase=phase,
                              attempts=attempts, submitted_at=NOW, updated_at=NOW)


async def ask(rec: contract.JobRecord | None, backend: base.ClusterBackend,
              **request: object) -> contract.LogChunk:
    async def lookup(job_id: str) -> contract.JobRecord | None:
        return rec if rec is not None and job_id == rec.spec.id else None

    req = contract.LogRequest.model_validate({"job_id": "j1", **request})
    return await logs.answer(req, lookup=lookup, backend=backend)


async def running_pod(fake: FakeBackend, n: int) -> None:
    await fake.create_pod(contract.PodSpec(name=contract.pod_name("j1", n), job_id="j1", attempt=n,
                                           queue="default", command=("true",)))
    fake.set_phase(contract.pod_name("j1", n), contract.PodPhase.RUNNING)


# --- requests that fail as a whole ---------------------------------------------------------------


@pytest.mark.parametrize("data", [b"not json", b"{}", b'{"job_id": "j1", "offset": -1}',
                                  b'{"job_id": "j1", "attempt": 0}', b'{"job_id": "j1", "extra": 1}'])
def test_a_bad_request_gets_an_error_reply(data: bytes) -> None:
    reply = logs.parse_request(data)
    assert isinstance(reply, contract.LogChunk)
    assert reply.finished and reply.attempt is None and reply.error.startswith("invalid log request")


async def test_unknown_job_and_unknown_attempt() -> None:
    fake = FakeBackend()
    unknown = await ask(None, fake)
    assert (unknown.error, unknown.finished, unknown.attempt) == ("no job j1", True, None)
    missing = await ask(record(attempt(1, State.FAILED)), fake, attempt=3)
    assert missing.finished and missing.attempt is None and "no attempt 3 (it has 1)" in missing.error


async def test_a_queued_job_has_no_attempt_yet_and_one_that_ended_without_never_will() -> None:
    fake = FakeBackend()
    queued = await ask(record(phase=contract.JobPhase.QUEUED), fake)
    assert queued.attempt is None and not queued.finished and "no attempt yet" in queued.error
    cancelled = await ask(record(phase=contract.JobPhase.CANCELLED), fake)
    assert cancelled.attempt is None and cancelled.finished and "without running" in cancelled.error


# --- reading --------------------------------------------------------------------------------------


async def test_reads_the_current_attempt_from_an_offset_and_is_not_finished_while_it_runs() -> None:
    fake = FakeBackend()
    await running_pod(fake, 2)
    fake.logs[contract.pod_name("j1", 2)] = b"line-1\nline-2\n"
    rec = record(attempt(1, State.FAILED, reason=Reason.APP_ERROR), attempt(2, State.RUNNING))
    chunk = await ask(rec, fake)
    assert (chunk.attempt, chunk.pod, chunk.node) == (2, "job-j1-2", "fake-1")
    assert (chunk.data, chunk.offset, chunk.next_offset, chunk.finished, chunk.error) == (
        "line-1\nline-2\n", 0, 14, False, "")
    later = await ask(rec, fake, offset=7, limit=3)
    assert (later.data, later.next_offset) == ("lin", 10)
    drained = await ask(rec, fake, offset=14)
    assert (drained.data, drained.next_offset, drained.finished) == ("", 14, False)


async def test_a_final_attempt_or_a_stopped_pod_is_finished() -> None:
    fake = FakeBackend()
    fake.logs["job-j1-1"] = b"out\n"
    rec = record(attempt(1, State.FAILED, reason=Reason.APP_ERROR), attempt(2, State.CREATING, node=None))
    chunk = await ask(rec, fake, attempt=1)
    assert (chunk.attempt, chunk.data, chunk.finished) == (1, "out\n", True)
    await running_pod(fake, 2)
    fake.logs["job-j1-2"] = b"x"
    fake.set_phase("job-j1-2", contract.PodPhase.SUCCEEDED, exit_code=0)
    assert (await ask(record(attempt(2, State.RUNNING)), fake)).finished  # pod done, record not yet


async def test_a_character_cut_in_two_waits_for_the_next_read() -> None:
    fake = FakeBackend()
    await running_pod(fake, 1)
    fake.logs["job-j1-1"] = "héllo".encode()  # é is 2 bytes: 1..3
    rec = record(attempt(1, State.RUNNING))
    first = await ask(rec, fake, limit=2)
    assert (first.data, first.next_offset) == ("h", 1)
    second = await ask(rec, fake, offset=1)
    assert (second.data, second.next_offset) == ("éllo", 6)
    assert logs.complete_utf8(b"\xc3") == b"\xc3"  # nothing else to send: sent as it is


# --- unreadable logs -------------------------------------------------------------------------------


async def test_a_gone_log_of_a_failed_attempt_replies_with_the_kept_tail() -> None:
    rec = record(attempt(1, State.FAILED, reason=Reason.APP_ERROR, exit_code=3, log_tail="line-1\nline-2"),
                 phase=contract.JobPhase.DEAD)
    chunk = await ask(rec, FakeBackend())
    assert chunk.finished and chunk.attempt == 1 and chunk.data == ""
    assert chunk.error.startswith("the log of attempt 1 is gone") and chunk.tail == "line-1\nline-2"


async def test_a_pending_attempt_says_why_it_waits_and_is_not_finished() -> None:
    rec = record(attempt(1, State.PENDING, waiting_reason="0/3 nodes are available: Insufficient cpu"))
    chunk = await ask(rec, FakeBackend())
    assert not chunk.finished and chunk.attempt == 1
    assert chunk.error == "attempt 1 has not started yet: 0/3 nodes are available: Insufficient cpu"


async def test_a_running_attempt_whose_node_does_not_answer_is_not_finished() -> None:
    class Silent(FakeBackend):
        async def read_log(self, name: str, *, node: str | None, offset: int = 0,
                           limit: int = 65536) -> base.LogRead:
            raise base.LogUnavailable(f"node {node} does not answer")

    chunk = await ask(record(attempt(1, State.RUNNING)), Silent())
    assert not chunk.finished and "cannot be read now (node fake-1 does not answer)" in chunk.error


# --- the SDK and the node agent --------------------------------------------------------------------


@pytest.mark.parametrize(("shown", "tail", "unseen"), [
    ("", "a\nb", "a\nb"),
    ("a\nb\n", "a\nb", ""),
    ("a\nb\n", "b\nc", "c"),
    ("x\nlong line\nb\n", "ne\nb\nc\nd", "c\nd"),  # the tail's first line was cut
    ("a\n", "b\nc", "b\nc"),
])
def test_unseen_tail(shown: str, tail: str, unseen: str) -> None:
    assert unseen_tail(shown, tail) == unseen


def test_node_agent_reads_a_range_and_a_tail(tmp_path: Path) -> None:
    path = tmp_path / "pod.log"
    lines = [f"line-{i}" for i in range(1, 201)]
    path.write_text("\n".join(lines) + "\n")
    assert node_agent.read_log(path, offset=0, limit=7) == (b"line-1\n", 7)
    size = path.stat().st_size
    assert node_agent.read_log(path, offset=size, limit=100) == (b"", size)
    tail = node_agent.read_tail(path).splitlines()
    assert tail[-1] == "line-200" and len(tail) == contract.LOG_TAIL_LINES
    assert node_agent.read_tail(tmp_path / "missing.log") == ""


def test_status_lines_show_a_failed_attempts_last_lines_and_why_the_current_one_waits() -> None:
    from submitter.commands import STATUS_TAIL_LINES, attempt_lines

    kept = "\n".join(f"out-{i}" for i in range(1, 16))
    rec = record(attempt(1, State.FAILED, reason=Reason.APP_ERROR, exit_code=3, log_tail=kept),
                 attempt(2, State.PENDING, node=None, waiting_reason="0/3 nodes are available"))
    lines = attempt_lines(rec)
    assert lines[0].startswith("  attempt 1: failed") and "exit=3" in lines[0]
    assert lines[1] == "    last output (5 earlier line(s): jobq logs j1 --attempt 1):"
    assert lines[2:2 + STATUS_TAIL_LINES] == [f"      | out-{i}" for i in range(6, 16)]
    assert lines[-2].startswith("  attempt 2: pending")
    assert lines[-1] == "    waiting: 0/3 nodes are available"
    short = attempt_lines(record(attempt(1, State.FAILED, log_tail="a\nb")))
    assert short[1:] == ["    last output:", "      | a", "      | b"]
