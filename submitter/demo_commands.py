"""``jobq demo``: the embedded stack and a workload of real ML jobs (submitter.demo runs it)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from submitter import clibase


def register(group: click.Group) -> None:
    """Add ``demo`` to ``group``."""
    group.add_command(demo)


@click.command()
@click.option("--jobs", default=24, show_default=True,
              help="Jobs in the workload (at least 4), one of them a long training job that checkpoints.")
@click.option("--nodes", default=3, show_default=True, help="Node agents.")
@click.option("--node-cpu", default=6.0, show_default=True,
              help="CPU cores each node offers (sized so that the others can absorb a killed node's work).")
@click.option("--node-memory", default="8Gi", show_default=True, help="Memory each node offers.")
@click.option("--kill-node/--no-kill-node", default=False, show_default=True,
              help="SIGKILL the long training job's node mid-run, and report the recovery.")
@click.option("--json", "as_json", is_flag=True, help="End with one JSON summary line on stdout.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Where the demo keeps its stack (default: a fresh .jobq/demo-<time>).")
@click.option("--nats", "nats_url", default=None, metavar="URL",
              help="Use this NATS server instead of starting one.")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait for the workload.")
@click.option("--backend", type=click.Choice(["local", "kubernetes"]), default="local", show_default=True,
              help="Where pods run: local node agents, or Kubernetes (--kill-node then kills a kubelet).")
@click.option("--kubeconfig", type=click.Path(path_type=Path), default=None,
              help="Kubeconfig for --backend kubernetes (default: the one of `jobq dev-cluster up`).")
def demo(jobs: int, nodes: int, node_cpu: float, node_memory: str, kill_node: bool, as_json: bool,
         data_dir: Path | None,
         nats_url: str | None, timeout: float, backend: str, kubeconfig: Path | None) -> None:
    """Start the embedded stack, run a workload of real ML jobs, print a summary, stop.

    The workload trains, evaluates and sweeps scikit-learn classifiers on bundled data sets, then
    batch-predicts with the trained models; one long job trains incrementally over paced epochs,
    saving a checkpoint after each (with --kill-node its node is killed and the summary says from
    which epoch it resumed and how much work was lost). Exits non-zero if any job was lost or failed.
    """
    from broker import settings
    from submitter import demo as demo_mod

    if jobs < 4:
        raise click.BadParameter("at least 4 jobs", param_hint="--jobs")
    try:
        summary = clibase.run(demo_mod.run_demo(
            jobs=jobs, nodes=nodes, node_cpu=node_cpu, node_memory=node_memory, kill_node=kill_node,
            data_dir=data_dir, nats_url=nats_url, timeout_s=timeout, as_json=as_json, backend=backend,
            kubeconfig=kubeconfig))
    except settings.SettingsError as exc:  # a JOBQ_* setting of the stack (JOBQ_NATS_AUTH, ...)
        raise click.UsageError(str(exc)) from None
    if summary["lost"] or summary["succeeded"] != summary["submitted"] or summary["duplicate_results"]:
        sys.exit(1)
