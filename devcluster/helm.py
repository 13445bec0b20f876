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

import sys
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
    path = build.binary_from_env("JOBQ_HELM", "helm")
    if path is not None:
        return path
    return build_helm(helm_bin_dir(cache_dir), progress if progress is not None else build.print_progress)


def build_helm(bin_dir: Path, progress: build.Progress, version: str = HELM_VERSION) -> Path:
    """``go install`` helm into ``bin_dir`` (once), atomically and under a file lock
    (``build.go_install``); returns the path of ``helm``."""
    return build.go_install(
        package=f"{HELM_MODULE}/cmd/helm",
        version=version,
        binary="helm",
        bin_dir=bin_dir,
        ldflags=version_ldflags(version),
        label="helm",
        progress=progress,
    )


def main() -> int:
    return build.print_built("helm", ensure_helm)


if __name__ == "__main__":
    sys.exit(main())
