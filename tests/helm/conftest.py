"""Fixtures for the Helm chart tests: ``helm`` built from its Go module, rendering helpers, and
(marker ``k8s``) the session's real control plane with its simulated kubelets.

Without Go every test here skips with one line saying why; with ``JOBQ_REQUIRE_K8S=1`` (CI)
that is a failure instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # no types-PyYAML in the venv

from devcluster.build import BuildError, find_kubectl
from devcluster.helm import ensure_helm

CHART = Path(__file__).resolve().parents[2] / "helm" / "jobq"

Manifest = dict[str, Any]


def say(line: str) -> None:
    """A progress line on the real stderr (visible while pytest captures output)."""
    stream = sys.__stderr__ or sys.stderr
    stream.write(f"[helm] {line}\n")
    stream.flush()


@pytest.fixture(scope="session")
def helm() -> Path:
    """The ``helm`` binary (built once into ~/.cache/jobq/helm-<version>/bin)."""
    try:
        return ensure_helm(progress=say)
    except BuildError as exc:
        message = f"Helm chart tests need helm built with Go: {str(exc).splitlines()[0]}"
        if os.environ.get("JOBQ_REQUIRE_K8S") == "1":
            pytest.fail(message + " (JOBQ_REQUIRE_K8S=1)", pytrace=False)
        pytest.skip(message)


def run_helm(helm: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    # Helm's own config, cache and data away from the user's: no repositories, no plugins.
    home = Path(tempfile.gettempdir()) / "jobq-helm-home"
    env = {
        **os.environ,
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    out = subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120, env=env)
    if check and out.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({out.returncode}):\n{out.stderr}{out.stdout}")
    return out


def set_args(values: dict[str, str]) -> list[str]:
    args: list[str] = []
    for key, value in values.items():
        args += [
            "--set-string" if value.startswith("str:") else "--set",
            f"{key}={value.removeprefix('str:')}",
        ]
    return args


def render(
    helm: Path,
    values: dict[str, str] | None = None,
    *,
    release: str = "t",
    namespace: str = "jobq-system",
    extra: Sequence[str] = (),
) -> list[Manifest]:
    """``helm template`` the chart with ``--set`` values; the manifests as dicts."""
    out = run_helm(
        helm, "template", release, str(CHART), "--namespace", namespace, *set_args(values or {}), *extra
    )
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def kubectl(
    kubeconfig: Path, *args: str, check: bool = True, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [str(find_kubectl()), "--kubeconfig", str(kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and out.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({out.returncode}):\n{out.stderr}{out.stdout}")
    return out
