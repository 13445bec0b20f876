"""Locate or build ``helm`` from its Go module, cached like the control-plane binaries.

Helm v4 (``helm.sh/helm/v4``) has no ``replace`` directives, so ``go install <pkg>@<version>``
builds it straight from the Go module proxy, with no wrapper module. The binary lands in
``<cache>/helm-<version>/bin/helm`` (default cache ``~/.cache/jobq``, ``$JOBQ_CACHE_DIR``
overrides); ``$JOBQ_HELM`` points at an existing binary instead. The build runs once, at low
priority, under a file lock, into a temporary directory that is renamed into place, so a
half-finished build is never picked up.

    python -m devcluster.helm        # build (first run only) and print the path
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from devcluster import build

HELM_MODULE = "helm.sh/helm/v4"
HELM_VERSION = "v4.3.2"
"""The pinned Helm release (its go.mod says ``go 1.26.0``; Go 1.26 builds it)."""


def helm_bin_dir(cache_dir: Path | None = None, version: str = HELM_VERSION) -> Path:
    """Where the built ``helm`` lives."""
    root = cache_dir if cache_dir is not None else build.default_cache_root()
    return root / f"helm-{version}" / "bin"


def version_ldflags(version: str = HELM_VERSION) -> str:
    """The ``-X`` flags Helm's own Makefile sets, so ``helm version`` reports the release."""
    pkg = f"{HELM_MODULE}/internal/version"
    return f"-s -w -X {pkg}.version={version} -X {pkg}.gitTreeState=clean"


def ensure_helm(*, cache_dir: Path | None = None, progress: build.Progress | None = None) -> Path:
    """Return the ``helm`` executable, building it first if it is not cached.

    Raises ``build.BuildError`` when Go is missing or too old, or when the build fails.
    """
    env = os.environ.get("JOBQ_HELM")
    if env:
        path = Path(env)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise build.BuildError(f"helm ($JOBQ_HELM): {path} is not an executable file")
        return path.resolve()
    bin_dir = helm_bin_dir(cache_dir)
    helm = bin_dir / "helm"
    if not os.access(helm, os.X_OK):
        build_helm(bin_dir, progress if progress is not None else _print_progress)
    return helm


def build_helm(bin_dir: Path, progress: build.Progress, version: str = HELM_VERSION) -> None:
    """``go install`` helm into ``bin_dir``, atomically and under a file lock."""
    go = build.find_go()
    bin_dir.parent.mkdir(parents=True, exist_ok=True)
    with build.file_lock(bin_dir.parent / ".build.lock"):
        if os.access(bin_dir / "helm", os.X_OK):  # another process finished while we waited
            return
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=bin_dir.parent))
        try:
            out = work / "bin"
            env = build.go_env()
            env["GOBIN"] = str(out)
            started = time.monotonic()
            progress(f"helm: building {HELM_MODULE}/cmd/helm@{version} with {go} (first run only)")
            cmd = [str(go), "install", "-v", "-p", str(max(os.cpu_count() or 1, 1)),
                   "-ldflags", version_ldflags(version), f"{HELM_MODULE}/cmd/helm@{version}"]
            # cwd outside any module: `go install pkg@version` ignores the current module anyway.
            build.run_go(cmd, work, env, progress, "helm go install")
            if not (out / "helm").is_file():
                raise build.BuildError("go install finished but did not produce helm")
            if bin_dir.exists():  # a partial leftover: replace it
                shutil.rmtree(bin_dir)
            out.rename(bin_dir)
            progress(f"helm: built in {time.monotonic() - started:.0f}s into {bin_dir}")
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _print_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main() -> int:
    try:
        print(ensure_helm())
    except build.BuildError as exc:
        print(f"helm: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
