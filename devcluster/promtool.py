"""Locate or build ``promtool`` from its Go module, cached like ``helm`` and the control plane.

The chart's alert and recording rules are checked (``promtool check rules``) and unit-tested
(``promtool test rules``) against series recorded from a real two-dispatcher run. Prometheus's
``go.mod`` has no ``replace`` directives, so ``go install <pkg>@<version>`` builds it straight
from the Go module proxy. The binary lands in ``<cache>/promtool-<version>/bin/promtool``
(default cache ``~/.cache/jobq``, ``$JOBQ_CACHE_DIR`` overrides); ``$JOBQ_PROMTOOL`` points at
an existing binary instead. Built once, at low priority, under a file lock, into a temporary
directory renamed into place (``build.go_install``).

    python -m devcluster.promtool    # build (first run only) and print the path
"""

from __future__ import annotations

import sys
from pathlib import Path

from devcluster import build

PROMETHEUS_MODULE = "github.com/prometheus/prometheus"
PROMTOOL_VERSION = "v0.316.0"
"""The pinned Prometheus module version (Prometheus 3.x's Go module numbering; its go.mod says
``go 1.26.7``, so Go 1.26 builds it)."""


def promtool_bin_dir(cache_dir: Path | None = None, version: str = PROMTOOL_VERSION) -> Path:
    """Where the built ``promtool`` lives."""
    root = cache_dir if cache_dir is not None else build.default_cache_root()
    return root / f"promtool-{version}" / "bin"


def version_ldflags(version: str = PROMTOOL_VERSION) -> str:
    """The ``-X`` flags Prometheus's promu sets, so ``promtool --version`` names the module version."""
    pkg = "github.com/prometheus/common/version"
    return f"-s -w -X {pkg}.Version={version.removeprefix('v')} -X {pkg}.Branch=module"


def ensure_promtool(*, cache_dir: Path | None = None, progress: build.Progress | None = None) -> Path:
    """Return the ``promtool`` executable, building it first if it is not cached.

    Raises ``build.BuildError`` when Go is missing or too old, or when the build fails.
    """
    path = build.binary_from_env("JOBQ_PROMTOOL", "promtool")
    if path is not None:
        return path
    return build.go_install(
        package=f"{PROMETHEUS_MODULE}/cmd/promtool",
        version=PROMTOOL_VERSION,
        binary="promtool",
        bin_dir=promtool_bin_dir(cache_dir),
        ldflags=version_ldflags(),
        label="promtool",
        progress=progress if progress is not None else build.print_progress,
    )


def main() -> int:
    return build.print_built("promtool", ensure_promtool)


if __name__ == "__main__":
    sys.exit(main())
