"""What one dispatcher's /metrics page holds as leader and as standby (the index and status are
the dispatcher's own classes; no server needed). The recorded two-dispatcher runs check the same
end to end."""

from __future__ import annotations

import datetime as dt

from prometheus_client.parser import text_string_to_metric_families

from broker import contract, metrics
from broker.dispatcher.index import JobIndex
from broker.dispatcher.service import Status
from broker.readmodel import backlog

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


async def _no_nodes() -> list[object]:
    return []


async def _no_backlog() -> backlog.Backlog:
    return backlog.Backlog(pending={}, dead_letters=0)


def _page(status: Status, index: JobIndex) -> dict[str, str]:
    m = metrics.Metrics(clock=lambda: NOW)
    m.bind(
        metrics.Sources(
            index=index,
            index_ready=lambda: True,
            status=status,
            nats_connected=lambda: True,
            list_nodes=_no_nodes,  # type: ignore[arg-type]
            read_backlog=_no_backlog,
        )
    )
    record = contract.JobRecord.model_validate(
        {"spec": {"id": "a", "task": "demo.sleep"}, "submitted_at": NOW, "updated_at": NOW, "epoch": 7}
    )
    index.put(record, 1)
    text = m.render().decode()
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def test_a_standby_exports_only_what_describes_its_process() -> None:
    families = _page(Status(leader=False), JobIndex())
    ours = {name for name in families if name.startswith("jobq_")}
    assert ours == {n.removesuffix("_total") for n in metrics.EVERY_REPLICA}
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "process_start_time_seconds"} <= set(
        families
    )


def test_the_leader_exports_every_metric() -> None:
    families = _page(Status(leader=True, epoch=7), JobIndex())
    ours = {name: kind for name, kind in families.items() if name.startswith("jobq_")}
    assert ours == {name.removesuffix("_total"): kind for name, (kind, _) in metrics.METRICS.items()}


def test_submissions_are_counted_by_the_epoch_that_wrote_them() -> None:
    """A record written under epoch 7 is counted by the leader of epoch 7, not by a later one."""
    for epoch, counted in ((7, 1.0), (8, 0.0)):
        m = metrics.Metrics(clock=lambda: NOW)
        index = JobIndex()
        m.bind(
            metrics.Sources(
                index=index,
                index_ready=lambda: True,
                status=Status(leader=True, epoch=epoch),
                nats_connected=lambda: True,
                list_nodes=_no_nodes,  # type: ignore[arg-type]
                read_backlog=_no_backlog,
            )
        )
        index.put(
            contract.JobRecord.model_validate(
                {
                    "spec": {"id": "a", "task": "demo.sleep"},
                    "submitted_at": NOW,
                    "updated_at": NOW,
                    "epoch": 7,
                }
            ),
            1,
        )
        assert m.submitted.labels(queue="default")._value.get() == counted
