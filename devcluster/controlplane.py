"""Run etcd, kube-apiserver, kube-controller-manager and kube-scheduler as local processes.

Everything listens on 127.0.0.1 on free ports. ``ControlPlane.start()`` returns once the
apiserver is ready, both controllers are healthy and the ``default`` service account exists.
The processes outlive the starting process unless ``detached=False``; ``ControlPlane.attach``
finds them again from the state file (``jobq dev-cluster down`` from another process).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from devcluster import components, gomod, probe, procs
from devcluster.build import BinPaths, Progress, ensure_binaries, find_kubectl
from devcluster.components import (
    APISERVER,
    COMPONENTS,
    CONTROLLER_MANAGER,
    ETCD,
    SCHEDULER,
    ControlPlaneConfig,
    default_state_dir,
)
from devcluster.kubeconfig import write_kubeconfig
from devcluster.pki import Pki, generate_pki
from devcluster.state import ClusterState, ComponentState

__all__ = ["ClusterStatus", "ComponentStatus", "ControlPlane", "ControlPlaneConfig", "ControlPlaneError",
           "default_state_dir"]

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
            self._launch(ETCD, components.etcd_args(bins.etcd, state_dir=self.state_dir, ports=ports))
            etcd_url = f"http://127.0.0.1:{ports['etcd_client']}/health"
            self._wait(ETCD, lambda: probe.get(etcd_url))

            apiserver = components.apiserver_args(
                bins.kube_apiserver, config=self.config, pki=pki, ports=ports
            )
            self._launch(APISERVER, apiserver)
            self._wait(APISERVER, lambda: probe.get(f"{server}/readyz", context=admin_tls))

            kcm = components.controller_manager_args(
                bins.kube_controller_manager, config=self.config, pki=pki, kubeconfig=kcm_conf, ports=ports
            )
            self._launch(CONTROLLER_MANAGER, kcm)
            scheduler = components.scheduler_args(bins.kube_scheduler, kubeconfig=sched_conf, ports=ports)
            self._launch(SCHEDULER, scheduler)
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
