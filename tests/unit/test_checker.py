"""The exactly-once checker's judge on hand-made evidence: every finding can be non-zero, and a
clean run is judged clean. Plus the demo.witness task that writes the ledger."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from broker import contract
from tests import checker
from tests.checker import Evidence, LedgerLine, ReaderView
from workers import tasks
from workers.tasks import demo_tasks, registry

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
JOB = "w-0000"


def record(
    job_id: str = JOB,
    *,
    attempts: int = 1,
    accepted: int | None = 1,
    phase: contract.JobPhase = contract.JobPhase.SUCCEEDED,
) -> contract.JobRecord:
    spec = contract.JobSpec(id=job_id, task="demo.witness", args={"ledger": "/l"})
    tried = tuple(
        contract.Attempt(number=n, pod=contract.pod_name(job_id, n), created_at=T0)
        for n in range(1, attempts + 1)
    )
    return contract.JobRecord(
        spec=spec, phase=phase, attempts=tried, result_attempt=accepted, submitted_at=T0, updated_at=T0
    )


def result(
    job_id: str = JOB, attempt: int = 1, token: str = "t1", *, pod: str | None = None, writer: bool = True
) -> contract.TaskResult:
    who = contract.Writer(pod=pod or contract.pod_name(job_id, attempt), pod_uid="u") if writer else None
    return contract.TaskResult(
        job_id=job_id, attempt=attempt, writer=who, output={"token": token}, started_at=T0, finished_at=T0
    )


def ledger(
    job_id: str = JOB, attempt: int = 1, token: str = "t1", *, pod: str | None = None, ended: bool = True
) -> list[LedgerLine]:
    pod = contract.pod_name(job_id, attempt) if pod is None else pod
    lines = [LedgerLine("start", job_id, attempt, pod=pod)]
    if ended:
        lines.append(LedgerLine("end", job_id, attempt, pod=pod, token=token))
    return lines


def succeeded(job_id: str = JOB, attempt: int = 1) -> contract.JobEvent:
    return contract.JobEvent(job_id=job_id, type=contract.EventType.SUCCEEDED, attempt=attempt)


def clean(job_id: str = JOB, token: str = "t1") -> Evidence:
    """One job, run once, accepted, seen by readers: no finding."""
    return Evidence(
        acked={job_id: 1},
        records={job_id: record(job_id)},
        result_attempts_seen={job_id: {1}},
        results={job_id: {1: [result(job_id, 1, token)]}},
        ledger=ledger(job_id, 1, token),
        events={job_id: [succeeded(job_id, 1)]},
        readers={job_id: ReaderView(result_attempt=1, result_token=token, artifact=token.encode())},
    )


def only(report: checker.Report, finding: str) -> None:
    """Exactly ``finding`` is non-zero (for JOB), every other finding is zero."""
    for name in checker.FINDINGS:
        assert getattr(report, name) == ([JOB] if name == finding else []), (name, report.describe())
    assert report.defects == 1
    assert report.summary()[finding] == 1
    assert JOB in report.describe()


def test_clean_run_has_no_findings() -> None:
    report = checker.judge(clean())
    assert report.defects == 0, report.describe()
    assert report.summary() == {
        "jobs": 1,
        "lost": 0,
        "duplicated": 0,
        "unproven": 0,
        "stale_visible": 0,
        "defects": 0,
        "stale_writes": 0,
        "ran": 1,
        "reruns": 0,
    }


@pytest.mark.parametrize(
    "change",
    [
        {"records": {}},  # acked, no record
        {"records": {JOB: record(accepted=None, phase=contract.JobPhase.RUNNING)}},  # never terminal
        {"records": {JOB: record(accepted=None, phase=contract.JobPhase.QUEUED)}},
        {"records": {JOB: record(accepted=None, phase=contract.JobPhase.DEAD)}},  # terminal, no success
        {"records": {JOB: record(accepted=None, phase=contract.JobPhase.CANCELLED)}},
        {"records": {JOB: record(accepted=None)}},  # succeeded, no result_attempt
    ],
)
def test_lost(change: dict[str, Any]) -> None:
    evidence = dataclasses.replace(clean(), **change)
    if not change["records"] or change["records"][JOB].phase != contract.JobPhase.SUCCEEDED:
        evidence.readers = {}  # a job that did not succeed has nothing to read
    report = checker.judge(evidence)
    assert report.lost == [JOB], report.describe()
    assert report.stale_visible == [] and report.unproven == []


def test_lost_counts_every_acked_job_the_system_never_heard_of() -> None:
    evidence = clean()
    evidence.acked = {JOB: 1, "w-0001": 2, "w-0002": 3}
    report = checker.judge(evidence)
    assert report.lost == ["w-0001", "w-0002"]
    assert report.defects == 2


def test_duplicated_by_events_naming_two_attempts() -> None:
    evidence = clean()
    evidence.records[JOB] = record(attempts=2, accepted=1)
    evidence.events[JOB] = [succeeded(attempt=1), succeeded(attempt=2)]
    only(checker.judge(evidence), "duplicated")


def test_duplicated_by_two_succeeded_events_of_one_attempt() -> None:
    evidence = clean()
    evidence.events[JOB] = [succeeded(attempt=1), succeeded(attempt=1)]
    only(checker.judge(evidence), "duplicated")


def test_duplicated_by_result_attempt_changing_between_reads() -> None:
    evidence = clean()
    evidence.result_attempts_seen[JOB] = {1, 2}
    only(checker.judge(evidence), "duplicated")


def test_duplicated_by_event_and_record_disagreeing() -> None:
    evidence = clean()
    evidence.records[JOB] = record(attempts=2, accepted=1)
    evidence.events[JOB] = [succeeded(attempt=2)]
    only(checker.judge(evidence), "duplicated")


def test_duplicated_by_the_accepted_result_key_being_overwritten() -> None:
    evidence = clean()
    evidence.results[JOB][1].append(result(token="t1", pod="job-w-0000-1", writer=False))
    report = checker.judge(evidence)
    assert report.duplicated == [JOB], report.describe()


@pytest.mark.parametrize(
    "case",
    [
        "no-end-line",
        "other-token",
        "no-result",
        "no-writer",
        "writer-pod",
        "ledger-pod",
        "result-names-other-attempt",
        "no-token",
    ],
)
def test_unproven(case: str) -> None:
    evidence = clean()
    if case == "no-end-line":
        evidence.ledger = ledger(ended=False)
    elif case == "other-token":
        evidence.ledger = ledger(token="forged")
    elif case == "no-result":
        evidence.results = {}
    elif case == "no-writer":
        evidence.results[JOB][1] = [result(writer=False)]
    elif case == "writer-pod":
        evidence.results[JOB][1] = [result(pod="job-w-0000-2")]
    elif case == "ledger-pod":  # the attempt ran as another pod than the record's
        evidence.ledger = ledger(pod="job-w-0000-7")
    elif case == "result-names-other-attempt":
        evidence.results[JOB][1] = [result(attempt=2, pod="job-w-0000-1")]
    elif case == "no-token":
        evidence.results[JOB][1] = [
            contract.TaskResult(
                job_id=JOB,
                attempt=1,
                writer=contract.Writer(pod="job-w-0000-1"),
                output={},
                started_at=T0,
                finished_at=T0,
            )
        ]
    report = checker.judge(evidence)
    assert report.unproven == [JOB], report.describe()
    assert report.lost == [] and report.duplicated == []


def test_a_ledger_without_pod_names_still_proves_by_the_records_pod() -> None:
    evidence = clean()
    evidence.ledger = ledger(pod="")  # JOBQ_POD not set: the record's pod name is the judge
    assert checker.judge(evidence).defects == 0


@pytest.mark.parametrize(
    "view",
    [
        ReaderView(result_attempt=1, result_token="old", artifact=b"t1"),  # stale result
        ReaderView(result_attempt=1, result_token="t1", artifact=b"old"),  # stale artifact
        ReaderView(result_attempt=2, result_token="t1", artifact=b"t1"),  # another attempt's result
        ReaderView(result_attempt=1, result_token="t1", errors=["artifact: ArtifactNotFound"]),
        ReaderView(errors=["result: JobFailed"]),
    ],
)
def test_stale_visible(view: ReaderView) -> None:
    evidence = clean()
    evidence.readers[JOB] = view
    only(checker.judge(evidence), "stale_visible")


def test_unread_succeeded_job_is_not_judged_clean() -> None:
    evidence = clean()
    evidence.readers = {}
    only(checker.judge(evidence), "stale_visible")


def test_stale_write_of_a_superseded_attempt_is_counted_not_a_defect() -> None:
    """Attempt 1 kept running after attempt 2 replaced it and finished too: proof the scenario had
    a stale writer. Attempt 2's result and artifact are what readers get: no defect."""
    evidence = clean(token="t2")
    evidence.records[JOB] = record(attempts=2, accepted=2)
    evidence.result_attempts_seen[JOB] = {2}
    evidence.results[JOB] = {1: [result(attempt=1, token="t1")], 2: [result(attempt=2, token="t2")]}
    evidence.ledger = ledger(attempt=1, token="t1") + ledger(attempt=2, token="t2")
    evidence.events[JOB] = [succeeded(attempt=2)]
    evidence.readers[JOB] = ReaderView(result_attempt=2, result_token="t2", artifact=b"t2")
    report = checker.judge(evidence)
    assert report.defects == 0, report.describe()
    assert report.stale_writes == 1
    assert report.ran == {JOB: 2}
    assert report.summary()["reruns"] == 1
    # ... and if readers get the stale attempt's artifact, that is a defect:
    evidence.readers[JOB] = ReaderView(result_attempt=2, result_token="t2", artifact=b"t1")
    assert checker.judge(evidence).stale_visible == [JOB]
    # ... as is the stale attempt's result being the accepted one without the record saying so:
    evidence.readers[JOB] = ReaderView(result_attempt=2, result_token="t2", artifact=b"t2")
    evidence.result_attempts_seen[JOB] = {1, 2}
    assert checker.judge(evidence).duplicated == [JOB]


def test_ledger_lines_of_other_jobs_are_ignored() -> None:
    evidence = clean()
    evidence.ledger += ledger("x-0001", 1, "tx")
    report = checker.judge(evidence)
    assert report.defects == 0 and report.stale_writes == 0 and report.ran == {JOB: 1}


def test_tally_sums_reports() -> None:
    bad = clean()
    bad.records = {}
    total = checker.tally([checker.judge(clean()), checker.judge(bad)])
    assert total["jobs"] == 2 and total["lost"] == 1 and total["defects"] == 1


def test_read_ledger_parses_lines_and_notes_broken_ones(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_text(
        json.dumps({"event": "start", "job_id": JOB, "attempt": 1, "pod": "p", "pid": 7, "at": "x"})
        + "\n\n{not json\n"
        + json.dumps({"event": "end", "job_id": JOB, "attempt": 1, "token": "t"})
        + "\n"
    )
    lines, notes = checker.read_ledger(path)
    assert lines == [
        LedgerLine("start", JOB, 1, pod="p", pid=7, at="x"),
        LedgerLine("end", JOB, 1, token="t"),
    ]
    assert len(notes) == 1 and "line 3" in notes[0]
    absent = tmp_path / "absent.jsonl"
    assert checker.read_ledger(absent) == ([], [f"no ledger at {absent}"])


def test_witness_specs(tmp_path: Path) -> None:
    specs = checker.witness_specs(
        3, tmp_path / "l.jsonl", seconds=(0.5, 2), prefix="k9", retry={"max_disruptions": 50}
    )
    assert [s.id for s in specs] == ["k9-0000", "k9-0001", "k9-0002"]
    assert [s.args["seconds"] for s in specs] == [0.5, 2.0, 0.5]
    assert all(s.task == "demo.witness" and s.args["ledger"] == str(tmp_path / "l.jsonl") for s in specs)
    assert specs[0].retry is not None and specs[0].retry.max_disruptions == 50


# --- the demo.witness task -----------------------------------------------------------------------


@dataclasses.dataclass
class Ctx:
    job_id: str = JOB
    attempt: int = 2
    node: str | None = "node-1"
    saved: dict[str, bytes] = dataclasses.field(default_factory=dict)

    def progress(self, fraction: float, message: str = "") -> None:
        pass

    def save_artifact(self, name: str, data: bytes) -> str:
        self.saved[name] = data
        return name

    def load_artifact(self, name: str, *, job_id: str | None = None) -> bytes:
        return self.saved[name]

    async def asave_artifact(self, name: str, data: bytes) -> str:
        return self.save_artifact(name, data)

    async def aload_artifact(self, name: str, *, job_id: str | None = None) -> bytes:
        return self.load_artifact(name)


async def test_witness_task_leaves_its_evidence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert registry.resolve("demo.witness") is demo_tasks.witness
    monkeypatch.setenv(contract.ENV_POD, "job-w-0000-2")
    path = tmp_path / "ledger.jsonl"
    ctx = Ctx()
    out = await demo_tasks.witness({"ledger": str(path), "seconds": 0.01}, ctx)
    lines, notes = checker.read_ledger(path)
    assert notes == []
    assert [(ln.event, ln.job_id, ln.attempt, ln.pod) for ln in lines] == [
        ("start", JOB, 2, "job-w-0000-2"),
        ("end", JOB, 2, "job-w-0000-2"),
    ]
    assert lines[1].token == out["token"] and len(out["token"]) == 32
    assert ctx.saved == {"witness.txt": out["token"].encode()}
    again = await demo_tasks.witness({"ledger": str(path), "seconds": 0}, ctx)
    assert again["token"] != out["token"]  # a fresh token per run
    assert len(checker.read_ledger(path)[0]) == 4


@pytest.mark.parametrize(
    "args", [{}, {"ledger": "relative.jsonl"}, {"ledger": "/x", "seconds": -1}, {"ledger": "/x", "oops": 1}]
)
async def test_witness_task_refuses_bad_arguments(args: dict[str, Any]) -> None:
    with pytest.raises(tasks.BadArgs):
        await demo_tasks.witness(args, Ctx())
