"""Run etcd, kube-apiserver, kube-controller-manager and kube-scheduler as local processes.

Everything listens on 127.0.0.1 on free ports. ``ControlPlane.start()`` returns once the
apiserver is ready, both controllers are healthy and the ``default`` service account exists.
The processes outlive the starting process unless ``detached=False``; ``ControlPlane.attach``
finds them again from the state file (``jobq dev-cluster down`` from another process).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from broker.devcluster import gomod, probe, procs
from broker.devcluster.build import BinPaths, Progress, ensure_binaries, find_kubectl
from broker.devcluster.kubeconfig import write_kubeconfig
from broker.devcluster.pki import FRONT_PROXY_CLIENT_CN, Pki, generate_pki
from broker.devcluster.state import ClusterState, ComponentState

ETCD = "etcd"
APISERVER = "kube-apiserver"
CONTROLLER_MANAGER = "kube-controller-manager"
SCHEDULER = "kube-scheduler"
COMPONENTS = (ETCD, APISERVER, CONTROLLER_MANAGER, SCHEDULER)
"""Start order; they are stopped in reverse."""

SERVICE_CIDR = "10.0.0.0/24"


def default_state_dir() -> Path:
    """``$JOBQ_DEV_CLUSTER_DIR`` or ``./.jobq/dev-cluster``."""
    return Path(os.environ.get("JOBQ_DEV_CLUSTER_DIR", ".jobq/dev-cluster"))


class ControlPlaneError(RuntimeError):
    """A component failed to start or the cluster is in an unexpected state."""

    def __init__(self, component: str, message: str, log_tail: str = "") -> None:
        self.component = component
        self.log_tail = log_tail
        text = f"{component}: {message}"
        if log_tail:
            text += f"\n--- last lines of the {component} log ---\n{log_tail}"
        super().__init__(text)


@dataclass(frozen=True)
class ControlPlaneConfig:
    """Tunables. Durations are Go duration strings (``"5s"``).

    The node-failure settings default to upstream's (kube-controller-manager and kube-apiserver
    v1.32+), so a dev cluster handles a dead node exactly as a stock cluster does: NotReady about
    50-55 s after the last Lease renewal, pods evicted 300 s later. ``fastest_safe()`` gives the
    quickest settings an operator could choose with stock kubelets.
    """

    state_dir: Path = field(default_factory=default_state_dir)
    cache_dir: Path | None = None
    node_monitor_period: str = "5s"
    """--node-monitor-period: how often the node lifecycle controller checks node health."""
    node_monitor_grace_period: str = "50s"
    """--node-monitor-grace-period: a node silent this long (no Lease renewal, no status) is Unknown."""
    node_startup_grace_period: str = "60s"
    """--node-startup-grace-period: the same for a node that has never been Ready."""
    node_eviction_rate: float = 0.1
    """--node-eviction-rate: nodes per second whose pods are tainted for eviction (per healthy zone)."""
    secondary_node_eviction_rate: float = 0.01
    """--secondary-node-eviction-rate: the rate in a partially disrupted zone (0 in zones of
    50 nodes or fewer)."""
    toleration_seconds: int = 300
    """--default-{not-ready,unreachable}-toleration-seconds for pods without their own."""
    detached: bool = True
    """False: components are killed when the thread that started them dies (for test fixtures)."""
    startup_timeout: float = 120.0
    wait_for_default_service_account: bool = True
    extra_args: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """Extra flags per component name, appended last (so they win)."""

    @classmethod
    def fastest_safe(cls, **overrides: Any) -> ControlPlaneConfig:
        """The fastest node-failure settings an operator could safely choose with stock kubelets
        (Lease renewed every 10 s, retried from 0.2 s doubling up to 7 s on failure):

        - grace 20 s: two renew intervals. A renewal that fails is retried 0.2, 0.6, 1.4, 3.0
          and 6.2 s after it was due, all within the grace, so one failed renewal (an apiserver
          blip of a few seconds) never marks a healthy node NotReady; a dead node is NotReady
          20-21 s after its last renewal. At 10-15 s a single late renewal (plus the controller's
          tick) would flap the node and, with 1 s tolerations, evict its pods.
        - monitor period 1 s: detection latency grace + up to 1 s. The check reads the informer
          caches only, so a faster tick costs CPU, not API calls.
        - startup grace 60 s (stock): it only delays the verdict on a node that never became
          Ready; a fresh kubelet posts Ready at registration.
        - tolerations 1 s: pods of a NotReady/unreachable node are evicted (deletionTimestamp)
          1 s after the taint, the shortest positive value; 0 would also evict pods of a node
          that is only briefly NotReady, with no chance to come back.
        - eviction rate 10 nodes/s: the per-zone token bucket no longer delays a second dead
          node by 10 s. The secondary rate stays stock: it is the brake for a zone that is
          partly down, where evicting faster makes things worse.
        """
        values: dict[str, Any] = {
            "node_monitor_period": "1s",
            "node_monitor_grace_period": "20s",
            "node_startup_grace_period": "60s",
            "node_eviction_rate": 10.0,
            "toleration_seconds": 1,
            **overrides,
        }
        return cls(**values)


@dataclass(frozen=True)
class ComponentStatus:
    """Liveness of one component process."""

    name: str
    pid: int
    alive: bool
    rss_bytes: int
    log: Path


@dataclass(frozen=True)
class ClusterStatus:
    """What ``ControlPlane.status()`` found."""

    state: ClusterState | None
    components: list[ComponentStatus]
    apiserver_ready: bool

    @property
    def running(self) -> bool:
        """Start-up completed, every component alive and the apiserver ready."""
        complete = self.state is not None and self.state.ready
        return complete and self.apiserver_ready and all(c.alive for c in self.components)


class ControlPlane:
    """A local Kubernetes control plane; also a context manager (start on enter, stop on exit)."""

    def __init__(
        self,
        config: ControlPlaneConfig | None = None,
        *,
        binaries: BinPaths | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.config = config if config is not None else ControlPlaneConfig()
        self.state_dir = self.config.state_dir.expanduser().resolve()
        self._binaries = binaries
        self._progress: Progress = progress if progress is not None else (lambda _line: None)
        self._popens: dict[str, subprocess.Popen[bytes]] = {}
        self._components: dict[str, ComponentState] = {}
        self.state: ClusterState | None = None
        self._record: Callable[[bool], object] = lambda _ready: None

    # ----------------------------------------------------------------- paths
    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (user ``kubernetes-admin``, group ``system:masters``)."""
        return self.state_dir / "kubeconfig"

    @property
    def pki(self) -> Pki:
        """Certificate and key paths (valid after ``start``)."""
        return Pki.at(self.state_dir / "pki")

    def log_path(self, component: str) -> Path:
        """Where a component's stdout and stderr go."""
        return self.state_dir / "logs" / f"{component}.log"

    # ------------------------------------------------------------- lifecycle
    @classmethod
    def attach(cls, state_dir: Path | None = None) -> ControlPlane:
        """The control plane recorded in ``state_dir`` (e.g. started by another process)."""
        plane = cls(ControlPlaneConfig(state_dir=state_dir or default_state_dir()))
        state = ClusterState.load(plane.state_dir)
        if state is None:
            raise ControlPlaneError("dev-cluster", f"no control plane recorded in {plane.state_dir}")
        plane.state = state
        plane._components = {c.name: c for c in state.components}
        return plane

    @classmethod
    def stop_recorded(cls, state_dir: Path | None = None, *, timeout: float = 10.0) -> bool:
        """Stop the control plane recorded in ``state_dir``; False if none was recorded."""
        try:
            plane = cls.attach(state_dir)
        except ControlPlaneError:
            return False
        plane.stop(timeout=timeout)
        return True

    def start(self) -> ClusterState:
        """Start every component and wait until the cluster is usable; returns the saved state."""
        self._refuse_if_running()
        started = time.monotonic()
        bins = self._binaries or ensure_binaries(cache_dir=self.config.cache_dir, progress=self._progress)
        self._reset_dir()
        pki = generate_pki(self.state_dir / "pki")
        ports = {
            "etcd_client": procs.free_port(),
            "etcd_peer": procs.free_port(),
            "apiserver": procs.free_port(),
            "controller_manager": procs.free_port(),
            "scheduler": procs.free_port(),
        }
        server = f"https://127.0.0.1:{ports['apiserver']}"
        conf = self.state_dir / "conf"
        write_kubeconfig(self.kubeconfig, server=server, ca_cert=pki.ca.cert, client=pki.admin, user="admin")
        kcm_conf = write_kubeconfig(
            conf / "kube-controller-manager.kubeconfig",
            server=server,
            ca_cert=pki.ca.cert,
            client=pki.controller_manager,
            user=CONTROLLER_MANAGER,
        )
        sched_conf = write_kubeconfig(
            conf / "kube-scheduler.kubeconfig",
            server=server,
            ca_cert=pki.ca.cert,
            client=pki.scheduler,
            user=SCHEDULER,
        )
        admin_tls = probe.client_context(str(pki.ca.cert), pki.admin)
        self._record = lambda ready: self._save_state(server, ports, started, ready)
        try:
            self._launch(ETCD, self._etcd_args(bins.etcd, ports))
            etcd_url = f"http://127.0.0.1:{ports['etcd_client']}/health"
            self._wait(ETCD, lambda: probe.get(etcd_url))

            self._launch(APISERVER, self._apiserver_args(bins.kube_apiserver, pki, ports))
            self._wait(APISERVER, lambda: probe.get(f"{server}/readyz", context=admin_tls))

            self._launch(
                CONTROLLER_MANAGER, self._kcm_args(bins.kube_controller_manager, pki, kcm_conf, ports)
            )
            self._launch(SCHEDULER, self._scheduler_args(bins.kube_scheduler, sched_conf, ports))
            self._wait(CONTROLLER_MANAGER, _healthz(ports["controller_manager"]))
            self._wait(SCHEDULER, _healthz(ports["scheduler"]))
            if self.config.wait_for_default_service_account:
                sa_url = f"{server}/api/v1/namespaces/default/serviceaccounts/default"
                self._wait(
                    CONTROLLER_MANAGER,
                    lambda: probe.get(sa_url, context=admin_tls),
                    "default service account",
                )
        except BaseException:
            self.stop()
            raise
        self.state = self._save_state(server, ports, started, ready=True)
        self._progress(f"devcluster: control plane ready at {server} in {self.state.startup_seconds}s")
        return self.state

    def stop(self, *, timeout: float = 10.0) -> None:
        """Stop every component (SIGTERM, then SIGKILL after ``timeout`` s) and forget the state."""
        for name in reversed(COMPONENTS):
            comp = self._components.get(name)
            if comp is None:
                continue
            graceful = procs.terminate(comp.ref, popen=self._popens.get(name), timeout=timeout)
            if not graceful:
                self._progress(f"devcluster: {name} ignored SIGTERM for {timeout}s and was killed")
        self._components.clear()
        self._popens.clear()
        self.state = None
        ClusterState.remove(self.state_dir)

    def status(self) -> ClusterStatus:
        """Liveness and memory of each recorded component, and apiserver readiness."""
        state = self.state if self.state is not None else ClusterState.load(self.state_dir)
        if state is None:
            return ClusterStatus(state=None, components=[], apiserver_ready=False)
        comps = [
            ComponentStatus(c.name, c.pid, c.ref.alive(), _rss_bytes(c.pid), Path(c.log))
            for c in state.components
        ]
        ready = False
        pki = Pki.at(Path(state.state_dir) / "pki")
        if pki.ca.cert.exists():
            tls = probe.client_context(str(pki.ca.cert), pki.admin)
            ready = probe.get(f"{state.server}/readyz", context=tls).ok
        return ClusterStatus(state=state, components=comps, apiserver_ready=ready)

    def kubectl(
        self, *args: str, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster with the admin kubeconfig."""
        kubectl = self._binaries.kubectl if self._binaries is not None else find_kubectl()
        return subprocess.run(
            [str(kubectl), "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --------------------------------------------------------------- helpers
    def _refuse_if_running(self) -> None:
        existing = ClusterState.load(self.state_dir)
        if existing is None:
            return
        alive = [c.name for c in existing.components if c.ref.alive()]
        if alive:
            raise ControlPlaneError(
                "dev-cluster",
                f"already running in {self.state_dir} ({', '.join(alive)} alive); stop it first",
            )

    def _reset_dir(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for sub in ("pki", "etcd-data", "conf", "logs"):
            shutil.rmtree(self.state_dir / sub, ignore_errors=True)
        ClusterState.remove(self.state_dir)

    def _save_state(self, server: str, ports: dict[str, int], started: float, ready: bool) -> ClusterState:
        """Record what runs now; saved after every launch so ``down`` can clean up a half start."""
        state = ClusterState(
            state_dir=str(self.state_dir),
            kubeconfig=str(self.kubeconfig),
            server=server,
            k8s_version=gomod.K8S_VERSION,
            ports=ports,
            started_at=time.time(),
            startup_seconds=round(time.monotonic() - started, 2),
            components=[self._components[n] for n in COMPONENTS if n in self._components],
            ready=ready,
        )
        state.save()
        return state

    def _launch(self, name: str, argv: list[str]) -> None:
        argv = [*argv, *self.config.extra_args.get(name, ())]
        self._progress(f"devcluster: starting {name}")
        try:
            popen, ref = procs.spawn(argv, self.log_path(name), parent_death_signal=self._death_signal(name))
        except OSError as exc:
            raise ControlPlaneError(name, f"cannot execute {argv[0]}: {exc}") from exc
        self._popens[name] = popen
        self._components[name] = ComponentState(
            name=name, pid=ref.pid, start_time=ref.start_time, log=str(self.log_path(name)), argv=argv
        )
        self._record(False)

    def _death_signal(self, name: str) -> signal.Signals | None:
        """None when detached. Otherwise SIGKILL for the kube components: they all get the signal
        at once, and a kube-apiserver told to shut down gracefully while etcd is also going away
        hangs for a minute or more. etcd gets SIGTERM (its data dir is wiped on the next start).
        """
        if self.config.detached:
            return None
        return signal.SIGTERM if name == ETCD else signal.SIGKILL

    def _wait(self, name: str, check: Callable[[], probe.ProbeResult], what: str = "healthy") -> None:
        deadline = time.monotonic() + self.config.startup_timeout
        popen = self._popens[name]
        last = probe.ProbeResult(0, "not probed yet")
        while time.monotonic() < deadline:
            code = popen.poll()
            if code is not None:
                raise ControlPlaneError(
                    name, f"exited with code {code} during start-up", procs.tail(self.log_path(name))
                )
            last = check()
            if last.ok:
                return
            time.sleep(0.2)
        raise ControlPlaneError(
            name,
            f"not {what} after {self.config.startup_timeout:.0f}s "
            f"(last probe: {last.status} {last.body[:300]})",
            procs.tail(self.log_path(name)),
        )

    def _etcd_args(self, etcd: Path, ports: dict[str, int]) -> list[str]:
        client = f"http://127.0.0.1:{ports['etcd_client']}"
        peer = f"http://127.0.0.1:{ports['etcd_peer']}"
        return [
            str(etcd),
            "--name=jobq",
            f"--data-dir={self.state_dir / 'etcd-data'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=jobq={peer}",
            "--initial-cluster-state=new",
            "--auto-compaction-retention=1",
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]

    def _apiserver_args(self, binary: Path, pki: Pki, ports: dict[str, int]) -> list[str]:
        tol = self.config.toleration_seconds
        return [
            str(binary),
            f"--etcd-servers=http://127.0.0.1:{ports['etcd_client']}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={ports['apiserver']}",
            f"--cert-dir={pki.directory / 'apiserver-generated'}",
            f"--tls-cert-file={pki.apiserver.cert}",
            f"--tls-private-key-file={pki.apiserver.key}",
            f"--client-ca-file={pki.ca.cert}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",  # on top of the default set, as kubeadm does
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.sa_public_key}",
            f"--service-account-signing-key-file={pki.sa_private_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            "--endpoint-reconciler-type=none",  # endpoints may not hold a loopback address
            f"--default-not-ready-toleration-seconds={tol}",
            f"--default-unreachable-toleration-seconds={tol}",
            f"--requestheader-client-ca-file={pki.front_proxy_ca.cert}",
            f"--requestheader-allowed-names={FRONT_PROXY_CLIENT_CN}",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki.front_proxy_client.cert}",
            f"--proxy-client-key-file={pki.front_proxy_client.key}",
            # pods/log: the apiserver dials the kubelet at the node's InternalIP and
            # daemonEndpoints port, verifies its serving certificate with the cluster CA, and
            # presents the kubelet-client identity.
            f"--kubelet-client-certificate={pki.apiserver_kubelet_client.cert}",
            f"--kubelet-client-key={pki.apiserver_kubelet_client.key}",
            f"--kubelet-certificate-authority={pki.ca.cert}",
            "--kubelet-preferred-address-types=InternalIP",
            "--profiling=false",
        ]

    def _kcm_args(self, binary: Path, pki: Pki, kubeconfig: Path, ports: dict[str, int]) -> list[str]:
        cfg = self.config
        return [
            str(binary),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports['controller_manager']}",
            "--leader-elect=false",
            "--controllers=*",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki.sa_private_key}",
            f"--root-ca-file={pki.ca.cert}",
            f"--cluster-signing-cert-file={pki.ca.cert}",
            f"--cluster-signing-key-file={pki.ca.key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--node-monitor-period={cfg.node_monitor_period}",
            f"--node-monitor-grace-period={cfg.node_monitor_grace_period}",
            f"--node-startup-grace-period={cfg.node_startup_grace_period}",
            f"--node-eviction-rate={cfg.node_eviction_rate}",
            f"--secondary-node-eviction-rate={cfg.secondary_node_eviction_rate}",
            "--profiling=false",
        ]

    def _scheduler_args(self, binary: Path, kubeconfig: Path, ports: dict[str, int]) -> list[str]:
        return [
            str(binary),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports['scheduler']}",
            "--leader-elect=false",
            "--profiling=false",
        ]


def _healthz(port: int) -> Callable[[], probe.ProbeResult]:
    """A probe of a controller's /healthz (self-signed serving cert, anonymous access allowed)."""
    url = f"https://127.0.0.1:{port}/healthz"
    insecure = probe.client_context(None, None)
    return lambda: probe.get(url, context=insecure)


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0
