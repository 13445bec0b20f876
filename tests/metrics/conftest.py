"""Fixtures for the metrics and rules tests: ``promtool`` built from its Go module.

Without Go every promtool test skips with one line saying why; with ``JOBQ_REQUIRE_K8S=1`` (CI,
as for helm and the control plane) that is a failure instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from devcluster.build import BuildError
from devcluster.promtool import ensure_promtool


def say(line: str) -> None:
    """A progress line on the real stderr (visible while pytest captures output)."""
    stream = sys.__stderr__ or sys.stderr
    stream.write(f"[promtool] {line}\n")
    stream.flush()


@pytest.fixture(scope="session")
def promtool() -> Path:
    """The ``promtool`` binary (built once into ~/.cache/jobq/promtool-<version>/bin: about 5
    minutes on 2 cores, which is why the modules using it allow 600 s per test)."""
    try:
        return ensure_promtool(progress=say)
    except BuildError as exc:
        message = f"rules tests need promtool built with Go: {str(exc).splitlines()[0]}"
        if os.environ.get("JOBQ_REQUIRE_K8S") == "1":
            pytest.fail(message + " (JOBQ_REQUIRE_K8S=1)", pytrace=False)
        pytest.skip(message)


# The chart's rules are rendered with test thresholds by the same helm the chart tests build.
from tests.helm.conftest import helm  # noqa: E402, F401
