"""An independent exactly-once checker: judges a run from evidence the dispatcher does not produce.

    specs = witness_specs(20, ledger=tmp_path / "ledger.jsonl", seconds=(0.5, 2.0), prefix="k9")
    acked = await submit_witnessed(client, specs)           # job id -> PubAck stream sequence
    ...break things...
    report = await check(client, acked=acked, ledger=tmp_path / "ledger.jsonl", timeout_s=120)
    assert report.defects == 0, report.describe()           # report.summary() for logs and notes

The jobs run the built-in task ``demo.witness``: each attempt appends a ``start`` line to the
ledger (a JSONL file the attempt itself writes), then a fresh random token to artifact
``witness.txt``, an ``end`` line with that token, and returns the token as its result. The
evidence is: the publish acks (``submit_witnessed`` publishes itself), the ledger, every result
key of the jobs (KV ``jobq_results``, watched while waiting, so an overwrite is seen), the job
records (KV ``jobq_jobs``, watched: every ``result_attempt`` seen), the events, and what readers
get from the SDK (``client.result``, ``client.artifact``). The judge (``judge``) is a pure function
of an ``Evidence``, so each finding is unit-tested on hand-made evidence (tests/unit/test_checker.py).

Findings, per job (``Report``):

- ``lost``: acked, but not ``succeeded`` at the end (no record, never terminal, dead, cancelled);
- ``duplicated``: more than one accepted result: ``succeeded`` events naming different attempts,
  or more than one ``succeeded`` event, or ``result_attempt`` seen with two values, or a
  ``succeeded`` event naming another attempt than the record, or the accepted result key written
  twice with different contents;
- ``unproven``: an accepted result without evidence: no ledger ``end`` line for (job, accepted
  attempt) carrying the accepted result's token, or no writer on the result, or a writer pod that
  is not that attempt's pod (the record's pod name, and the pod the ledger saw);
- ``stale_visible``: what readers get (the result's token, the artifact's content) is not the
  accepted attempt's ledger token (or cannot be read at all).

``stale_writes`` counts ledger ``end`` lines of attempts that were not accepted: proof that a
scenario really had a superseded attempt finish and write. ``ran`` is the ``start`` lines per job.
``check`` watches from the moment it is called and reads the ledger last: a test whose stale
attempt writes late should pass a ``settle_s`` that covers it (default 1 s after the last job
ended), or assert on ``stale_writes`` to know it did.

This module uses only the wire contract (``broker.contract``), plain NATS/JetStream reads and the
SDK's public calls; nothing of the dispatcher. ``chaos.probes.exactly_once_defects`` loads it from
the checkout (see docs/chaos.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
from pydantic import ValidationError

from broker import contract, natsutil
from submitter.client import JobqClient

WITNESS_TASK = "demo.witness"
WITNESS_ARTIFACT = "witness.txt"
FINDINGS = ("lost", "duplicated", "unproven", "stale_visible")


class CheckerError(RuntimeError):
    """The checker could not gather its evidence (not a finding about the system under test)."""


# --- submitting ---------------------------------------------------------------------------------


def witness_specs(
    n: int,
    ledger: Path | str,
    *,
    seconds: float | Sequence[float] = 1.0,
    prefix: str = "w",
    start: int = 0,
    progress_steps: int = 2,
    **fields: Any,
) -> list[contract.JobSpec]:
    """``n`` demo.witness jobs ``<prefix>-0000``... writing to ``ledger``. ``seconds`` is one
    duration or several, used in turn (job i sleeps ``seconds[i % len(seconds)]``); ``fields`` go
    into every spec (queue, retry, labels, profile...)."""
    durations = [float(seconds)] if isinstance(seconds, int | float) else [float(s) for s in seconds]
    if not durations:
        raise ValueError("seconds: give at least one duration")
    path = str(Path(ledger).resolve())
    fields.setdefault("profile", "small")
    return [
        contract.JobSpec.model_validate(
            {
                "id": f"{prefix}-{i:04d}",
                "task": WITNESS_TASK,
                "args": {
                    "ledger": path,
                    "seconds": durations[i % len(durations)],
                    "progress_steps": progress_steps,
                },
                **fields,
            }
        )
        for i in range(start, start + n)
    ]


async def submit_witnessed(
    client: JobqClient, specs: Iterable[contract.JobSpec | Mapping[str, Any]]
) -> dict[str, int]:
    """Publish each job as the SDK does (same subject, headers and payload) and return job id ->
    the stream sequence of its PubAck: the evidence that the system accepted the job. A retried
    publish keeps its Nats-Msg-Id, and JetStream answers a duplicate with the original sequence."""
    acked: dict[str, int] = {}
    for raw in specs:
        job = client.build_spec(raw if isinstance(raw, contract.JobSpec) else dict(raw))
        acked[job.id] = await _publish(client, job)
    return acked


async def _publish(client: JobqClient, job: contract.JobSpec) -> int:
    headers = {
        contract.HEADER_MSG_ID: job.dedupe_key,
        contract.HEADER_CONTRACT: str(contract.CONTRACT_VERSION),
    }
    payload = job.model_dump_json(exclude_defaults=True).encode()
    subject = contract.submit_subject(job.queue)
    ack = await natsutil.retry(lambda: client.js.publish(subject, payload, headers=dict(headers)))
    return int(ack.seq)


# --- evidence -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class LedgerLine:
    event: str
    job_id: str
    attempt: int
    pod: str = ""
    pid: int | None = None
    token: str | None = None
    at: str = ""


@dataclasses.dataclass(slots=True)
class ReaderView:
    """What the SDK hands a reader of the job."""

    result_attempt: int | None = None
    result_token: str | None = None
    artifact: bytes | None = None
    errors: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(slots=True)
class Evidence:
    acked: Mapping[str, int]
    records: dict[str, contract.JobRecord | None] = dataclasses.field(default_factory=dict)
    """Each job's record at the end (None: no record)."""
    result_attempts_seen: dict[str, set[int]] = dataclasses.field(default_factory=dict)
    """Every non-null ``result_attempt`` any read or watch update of the record showed."""
    results: dict[str, dict[int, list[contract.TaskResult]]] = dataclasses.field(default_factory=dict)
    """Per job, per attempt: every distinct value its result key was seen with."""
    ledger: list[LedgerLine] = dataclasses.field(default_factory=list)
    events: dict[str, list[contract.JobEvent]] = dataclasses.field(default_factory=dict)
    readers: dict[str, ReaderView] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(slots=True)
class Report:
    jobs: int = 0
    lost: list[str] = dataclasses.field(default_factory=list)
    duplicated: list[str] = dataclasses.field(default_factory=list)
    unproven: list[str] = dataclasses.field(default_factory=list)
    stale_visible: list[str] = dataclasses.field(default_factory=list)
    stale_writes: int = 0
    ran: dict[str, int] = dataclasses.field(default_factory=dict)
    """Ledger ``start`` lines per job: how many times it really began to run."""
    details: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    """Per job, why each finding (and each stale write) was made."""
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def defects(self) -> int:
        return len(self.lost) + len(self.duplicated) + len(self.unproven) + len(self.stale_visible)

    def summary(self) -> dict[str, int]:
        starts = sum(self.ran.values())
        return {
            "jobs": self.jobs,
            "lost": len(self.lost),
            "duplicated": len(self.duplicated),
            "unproven": len(self.unproven),
            "stale_visible": len(self.stale_visible),
            "defects": self.defects,
            "stale_writes": self.stale_writes,
            "ran": starts,
            "reruns": sum(max(0, n - 1) for n in self.ran.values()),
        }

    def describe(self, limit: int = 20) -> str:
        """The summary and, per job with a finding, why (for assertion messages)."""
        lines = [json.dumps(self.summary(), sort_keys=True)]
        flagged = sorted({j for f in FINDINGS for j in getattr(self, f)})
        for job_id in flagged[:limit]:
            lines.append(f"  {job_id}: " + "; ".join(self.details.get(job_id, [])))
        if len(flagged) > limit:
            lines.append(f"  ... and {len(flagged) - limit} more")
        lines.extend(f"  note: {n}" for n in self.notes[:limit])
        return "\n".join(lines)

    def _flag(self, finding: str, job_id: str, why: str) -> None:
        found: list[str] = getattr(self, finding)
        if job_id not in found:
            found.append(job_id)
        self.details.setdefault(job_id, []).append(f"{finding}: {why}")


def _token(result: contract.TaskResult | None) -> str | None:
    if result is None:
        return None
    token = result.output.get("token")
    return token if isinstance(token, str) else None


def judge(evidence: Evidence) -> Report:
    """The findings, from the evidence alone."""
    report = Report(jobs=len(evidence.acked), notes=list(evidence.notes))
    ends: dict[tuple[str, int], list[LedgerLine]] = {}
    for line in evidence.ledger:
        if line.job_id not in evidence.acked:
            continue
        if line.event == "start":
            report.ran[line.job_id] = report.ran.get(line.job_id, 0) + 1
        elif line.event == "end":
            ends.setdefault((line.job_id, line.attempt), []).append(line)

    for job_id in sorted(evidence.acked):
        record = evidence.records.get(job_id)
        accepted = record.result_attempt if record is not None else None
        # lost
        if record is None:
            report._flag("lost", job_id, "acked, but it has no record")
        elif not record.phase.is_terminal:
            report._flag("lost", job_id, f"never finished (still {record.phase.value})")
        elif record.phase != contract.JobPhase.SUCCEEDED:
            why = f"ended {record.phase.value}: {record.reason} {record.message}".strip()
            report._flag("lost", job_id, why)
        elif accepted is None:
            report._flag("lost", job_id, "succeeded without a result_attempt")

        # duplicated
        succeeded = [e for e in evidence.events.get(job_id, []) if e.type == contract.EventType.SUCCEEDED]
        named = {e.attempt for e in succeeded}
        if len(named) > 1:
            report._flag("duplicated", job_id, f"succeeded events name attempts {sorted(map(str, named))}")
        elif len(succeeded) > 1:
            report._flag("duplicated", job_id, f"{len(succeeded)} succeeded events")
        elif succeeded and accepted is not None and succeeded[0].attempt != accepted:
            report._flag(
                "duplicated",
                job_id,
                f"the succeeded event names attempt {succeeded[0].attempt}, the record {accepted}",
            )
        seen = set(evidence.result_attempts_seen.get(job_id, set()))
        if accepted is not None:
            seen.add(accepted)
        if len(seen) > 1:
            report._flag("duplicated", job_id, f"result_attempt seen as {sorted(seen)}")
        versions = evidence.results.get(job_id, {}).get(accepted, []) if accepted is not None else []
        if len(versions) > 1:
            report._flag(
                "duplicated", job_id, f"result key {job_id}.{accepted} held {len(versions)} different values"
            )

        # stale writes: end lines of attempts that were not accepted
        for (jid, attempt), lines in ends.items():
            if jid == job_id and attempt != accepted:
                report.stale_writes += len(lines)
                report.details.setdefault(job_id, []).append(
                    f"stale write: attempt {attempt} ended and wrote token(s) {[ln.token for ln in lines]}"
                )

        if accepted is None or record is None or record.phase != contract.JobPhase.SUCCEEDED:
            continue
        # unproven
        result = versions[-1] if versions else None
        token = _token(result)
        witnessed = [ln for ln in ends.get((job_id, accepted), []) if token is not None and ln.token == token]
        attempt_pod = (
            record.attempts[accepted - 1].pod
            if 0 < accepted <= len(record.attempts)
            else contract.pod_name(job_id, accepted)
        )
        if result is None:
            report._flag("unproven", job_id, f"no result under key {job_id}.{accepted}")
        elif token is None:
            report._flag("unproven", job_id, f"the accepted result (attempt {accepted}) has no token")
        elif not witnessed:
            report._flag("unproven", job_id, f"no ledger end line for attempt {accepted} with token {token}")
        if result is not None:
            if result.attempt != accepted or result.job_id != job_id:
                report._flag("unproven", job_id, f"the result says {result.job_id} attempt {result.attempt}")
            if result.writer is None:
                report._flag("unproven", job_id, "the accepted result names no writer")
            else:
                pods = {attempt_pod} | {ln.pod for ln in witnessed if ln.pod}
                if pods != {result.writer.pod}:
                    report._flag(
                        "unproven",
                        job_id,
                        f"written by pod {result.writer.pod!r}; attempt {accepted} ran as {sorted(pods)}",
                    )

        # stale_visible: what readers get must be the accepted attempt's ledger token
        expected = witnessed[0].token if witnessed else token
        view = evidence.readers.get(job_id, ReaderView(errors=["not read"]))
        for error in view.errors:
            report._flag("stale_visible", job_id, f"a reader got an error: {error}")
        if not view.errors or view.result_token is not None:
            if view.result_attempt is not None and view.result_attempt != accepted:
                report._flag("stale_visible", job_id, f"readers get attempt {view.result_attempt}'s result")
            if view.result_token != expected:
                report._flag(
                    "stale_visible", job_id, f"readers get token {view.result_token}, not {expected}"
                )
        if view.artifact is not None and view.artifact.decode(errors="replace") != expected:
            report._flag(
                "stale_visible", job_id, f"readers get artifact {view.artifact[:40]!r}, not {expected}"
            )
    return report


# --- gathering ----------------------------------------------------------------------------------


def read_ledger(path: Path) -> tuple[list[LedgerLine], list[str]]:
    """The ledger's lines, and a note per line that cannot be parsed."""
    lines: list[LedgerLine] = []
    notes: list[str] = []
    try:
        raw = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return [], [f"no ledger at {path}"]
    for n, text in enumerate(raw, 1):
        if not text.strip():
            continue
        try:
            data = json.loads(text)
            lines.append(
                LedgerLine(
                    event=str(data["event"]),
                    job_id=str(data["job_id"]),
                    attempt=int(data["attempt"]),
                    pod=str(data.get("pod") or ""),
                    pid=data.get("pid"),
                    token=data.get("token"),
                    at=str(data.get("at", "")),
                )
            )
        except (ValueError, KeyError, TypeError) as exc:
            notes.append(f"ledger line {n} unreadable ({exc!r}): {text[:80]!r}")
    return lines, notes


class _Watch:
    """Every value of the job records and result keys of the acked jobs, as they change."""

    def __init__(self, evidence: Evidence) -> None:
        self.evidence = evidence
        self.terminal: set[str] = set()
        self.changed = asyncio.Event()

    def on_record(self, key: str, value: bytes) -> None:
        if key not in self.evidence.acked:
            return
        try:
            record = contract.JobRecord.model_validate_json(value)
        except ValidationError as exc:
            self.evidence.notes.append(f"record {key} unreadable: {exc.errors()[:1]}")
            return
        self.evidence.records[key] = record
        if record.result_attempt is not None:
            self.evidence.result_attempts_seen.setdefault(key, set()).add(record.result_attempt)
        if record.phase.is_terminal:
            self.terminal.add(key)
        else:
            self.terminal.discard(key)
        self.changed.set()

    def on_result(self, key: str, value: bytes) -> None:
        job_id, _, attempt = key.rpartition(".")
        if job_id not in self.evidence.acked or not attempt.isdigit():
            return
        try:
            result = contract.TaskResult.model_validate_json(value)
        except ValidationError as exc:
            self.evidence.notes.append(f"result {key} unreadable: {exc.errors()[:1]}")
            return
        versions = self.evidence.results.setdefault(job_id, {}).setdefault(int(attempt), [])
        if result not in versions:
            versions.append(result)


async def _follow(
    client: JobqClient, bucket: str, on_value: Callable[[str, bytes], None], ready: asyncio.Event
) -> None:
    kv = await client.js.key_value(bucket)
    watcher: Any = await kv.watchall(include_history=True)
    try:
        async for entry in watcher:
            if entry is None:  # the initial values are all delivered
                ready.set()
                continue
            if entry.value and entry.operation in (None, "PUT"):
                on_value(entry.key, entry.value)
    finally:
        with contextlib.suppress(Exception):
            await watcher.stop()


async def _events(client: JobqClient, job_id: str, settled: bool) -> list[contract.JobEvent]:
    try:
        return await client.events(job_id, settled=settled, timeout=5)
    except TimeoutError:
        return await client.events(job_id)


async def _reader_view(client: JobqClient, job_id: str, artifact: str) -> ReaderView:
    view = ReaderView()
    try:
        result = await client.result(job_id, timeout=10)
        view.result_attempt, view.result_token = result.attempt, _token(result)
    except Exception as exc:  # any failure to read is what a reader would get
        view.errors.append(f"result: {type(exc).__name__}: {exc}")
    try:
        view.artifact = await client.artifact(job_id, artifact)
    except Exception as exc:  # idem
        view.errors.append(f"artifact: {type(exc).__name__}: {exc}")
    return view


async def gather(
    client: JobqClient,
    *,
    acked: Mapping[str, int],
    ledger: Path,
    artifact: str = WITNESS_ARTIFACT,
    timeout_s: float = 120.0,
    settle_s: float = 1.0,
) -> Evidence:
    """Wait (up to ``timeout_s``) for every acked job to be terminal, watching their records and
    result keys; wait ``settle_s`` more (late writes of stale attempts, events); read the rest."""
    evidence = Evidence(acked=dict(acked))
    watch = _Watch(evidence)
    ready = [asyncio.Event(), asyncio.Event()]
    followers = [
        asyncio.create_task(_follow(client, contract.BUCKET_JOBS, watch.on_record, ready[0])),
        asyncio.create_task(_follow(client, contract.BUCKET_RESULTS, watch.on_result, ready[1])),
    ]
    deadline = time.monotonic() + timeout_s
    next_poll = time.monotonic() + 2.0
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(r.wait() for r in ready)), min(10.0, timeout_s))
        while len(watch.terminal) < len(evidence.acked) and time.monotonic() < deadline:
            watch.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(watch.changed.wait(), min(1.0, max(0.01, deadline - time.monotonic())))
            broken = [f for f in followers if f.done()]
            if broken or time.monotonic() >= next_poll:  # a watch can break (NATS failover): poll too
                next_poll = time.monotonic() + 2.0
                for job_id in sorted(set(evidence.acked) - watch.terminal):
                    with contextlib.suppress(Exception):
                        record = await client.get(job_id)
                        if record is not None:
                            watch.on_record(job_id, record.model_dump_json().encode())
        await asyncio.sleep(settle_s)
    finally:
        for follower in followers:
            follower.cancel()
        for follower in followers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await follower
        for follower in followers:
            if not follower.cancelled() and follower.exception() is not None:
                evidence.notes.append(f"a watch broke: {follower.exception()!r}")
    pending = sorted(set(evidence.acked) - watch.terminal)
    if pending:
        evidence.notes.append(f"{len(pending)} job(s) not terminal after {timeout_s:g}s: {pending[:5]}")

    # Final reads, job by job (a record read here that differs from the watch is evidence too).
    limit = asyncio.Semaphore(8)

    async def finish(job_id: str) -> None:
        async with limit:
            record = await client.get(job_id)
            if record is not None:
                watch.on_record(job_id, record.model_dump_json().encode())
            evidence.records[job_id] = record
            succeeded = record is not None and record.phase == contract.JobPhase.SUCCEEDED
            evidence.events[job_id] = await _events(client, job_id, settled=succeeded)
            if succeeded:
                evidence.readers[job_id] = await _reader_view(client, job_id, artifact)
            if record is not None:
                await _read_results(client, job_id, len(record.attempts), watch)
            again = await client.get(job_id)  # result_attempt must not change between reads
            if again is not None:
                watch.on_record(job_id, again.model_dump_json().encode())
                evidence.records[job_id] = again

    await asyncio.gather(*(finish(j) for j in evidence.acked))
    evidence.ledger, notes = read_ledger(Path(ledger))
    evidence.notes.extend(notes)
    return evidence


async def _read_results(client: JobqClient, job_id: str, attempts: int, watch: _Watch) -> None:
    kv = await client.js.key_value(contract.BUCKET_RESULTS)
    for n in range(1, attempts + 1):
        with contextlib.suppress(nats.js.errors.KeyNotFoundError, nats.errors.TimeoutError):
            entry = await kv.get(contract.result_key(job_id, n))
            if entry.value:
                watch.on_result(contract.result_key(job_id, n), entry.value)


async def check(
    client: JobqClient,
    *,
    acked: Mapping[str, int],
    ledger: Path,
    artifact: str = WITNESS_ARTIFACT,
    timeout_s: float = 120.0,
    settle_s: float = 1.0,
) -> Report:
    """Wait for the acked jobs to end (own deadline ``timeout_s``), gather the evidence, judge it."""
    evidence = await gather(
        client, acked=acked, ledger=ledger, artifact=artifact, timeout_s=timeout_s, settle_s=settle_s
    )
    return judge(evidence)


def tally(reports: Iterable[Report]) -> dict[str, int]:
    """The sum of several reports' summaries."""
    total: Counter[str] = Counter()
    for report in reports:
        total.update(report.summary())
    return dict(total)
