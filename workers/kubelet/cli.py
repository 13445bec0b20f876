"""``python -m workers.kubelet`` / ``jobq kubelet``: the flags, then the kubelet until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from broker import contract
from workers.kubelet.agent import run_kubelet
from workers.kubelet.settings import KubeletSettings


def main(argv: list[str] | None = None) -> None:
    """``python -m workers.kubelet --name N --kubeconfig PATH [--cpu C --memory M --gpu G] ...``."""
    import argparse

    from broker import logsetup
    from workers import kubelet

    parser = argparse.ArgumentParser(prog="jobq kubelet", description=(kubelet.__doc__ or "").split("\n")[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--kubeconfig", default="")
    parser.add_argument("--cpu", type=float, default=2.0)
    parser.add_argument("--memory", default="4Gi")
    parser.add_argument("--gpu", type=int, default=0)
    parser.add_argument("--zone", default="")
    parser.add_argument("--node-lease-duration-seconds", type=int, default=40,
                        help="leaseDurationSeconds of the node's Lease (kubelet default 40)")
    parser.add_argument("--lease-renew-interval", type=float, default=None,
                        help="seconds between Lease renewals (default: lease duration x 0.25 = 10)")
    parser.add_argument("--node-status-update-frequency", type=float, default=10.0,
                        help="seconds between node status computations; posted only if changed (default 10)")
    parser.add_argument("--node-status-report-frequency", type=float, default=300.0,
                        help="seconds after which an unchanged node status is posted anyway (default 300)")
    parser.add_argument("--work-dir", type=Path, default=Path(".jobq/nodes"))
    parser.add_argument("--tls-cert-file", type=Path, default=None,
                        help="serving certificate of the log API (SANs 127.0.0.1 and the node name)")
    parser.add_argument("--tls-private-key-file", type=Path, default=None)
    parser.add_argument("--client-ca-file", type=Path, default=None,
                        help="CA of the API server's kubelet-client certificate")
    args = parser.parse_args(argv)
    logsetup.configure(fmt="console" if os.environ.get(contract.ENV_LOG_FORMAT) == "console" else "json",
                       component="kubelet")
    settings = KubeletSettings(
        name=args.name, kubeconfig=args.kubeconfig,
        capacity=contract.Resources(cpu=args.cpu, memory=args.memory, gpu=args.gpu), zone=args.zone,
        lease_duration_s=args.node_lease_duration_seconds, lease_renew_interval_s=args.lease_renew_interval,
        node_status_update_frequency_s=args.node_status_update_frequency,
        node_status_report_frequency_s=args.node_status_report_frequency, work_dir=args.work_dir,
        nats_url=os.environ.get(contract.ENV_NATS_URL, ""), tls_cert_file=args.tls_cert_file,
        tls_private_key_file=args.tls_private_key_file, client_ca_file=args.client_ca_file)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_kubelet(settings, stop)

    asyncio.run(run())

