"""The Go wrapper module used to build the Kubernetes control-plane binaries.

``k8s.io/kubernetes`` requires its staging modules at the non-existent version
``v0.0.0`` and resolves them with local ``replace`` lines that only apply inside
its own repository. A consumer must replace each one with the published
``v0.<minor>.<patch>`` that matches ``v1.<minor>.<patch>``.
"""

from __future__ import annotations

K8S_VERSION = "v1.36.3"
"""The pinned Kubernetes release whose binaries are built."""

GO_DIRECTIVE = "1.26.0"
"""The ``go`` line of the wrapper module (that of the k8s v1.36 staging modules)."""

MIN_GO = (1, 26)
"""The oldest Go toolchain that can build ``K8S_VERSION``."""

STAGING_MODULES: tuple[str, ...] = (
    "api",
    "apiextensions-apiserver",
    "apimachinery",
    "apiserver",
    "cli-runtime",
    "client-go",
    "cloud-provider",
    "cluster-bootstrap",
    "code-generator",
    "component-base",
    "component-helpers",
    "controller-manager",
    "cri-api",
    "cri-client",
    "cri-streaming",
    "csi-translation-lib",
    "dynamic-resource-allocation",
    "endpointslice",
    "externaljwt",
    "kms",
    "kube-aggregator",
    "kube-controller-manager",
    "kube-proxy",
    "kube-scheduler",
    "kubectl",
    "kubelet",
    "metrics",
    "mount-utils",
    "pod-security-admission",
    "sample-apiserver",
    "sample-cli-plugin",
    "sample-controller",
    "streaming",
)
"""Every ``k8s.io/<name>`` staging module that k8s.io/kubernetes requires at v0.0.0."""

COMMANDS: tuple[str, ...] = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
"""The binaries built, each from ``k8s.io/kubernetes/cmd/<name>``."""

MODULE_PATH = "example.invalid/jobq-k8sbins"


def staging_version(k8s_version: str = K8S_VERSION) -> str:
    """``v1.36.3`` -> ``v0.36.3``: the staging module version matching a k8s release."""
    major, minor, patch = _split_version(k8s_version)
    if major != 1:
        raise ValueError(f"unexpected Kubernetes version {k8s_version!r}")
    return f"v0.{minor}.{patch}"


def command_packages() -> list[str]:
    """The Go import paths of the main packages to build."""
    return [f"k8s.io/kubernetes/cmd/{name}" for name in COMMANDS]


def render_go_mod(k8s_version: str = K8S_VERSION) -> str:
    """The text of the wrapper ``go.mod`` (before ``go mod tidy`` adds indirect requirements)."""
    staging = staging_version(k8s_version)
    replaces = "\n".join(f"\tk8s.io/{m} => k8s.io/{m} {staging}" for m in STAGING_MODULES)
    return (
        f"module {MODULE_PATH}\n\n"
        f"go {GO_DIRECTIVE}\n\n"
        "godebug default=go1.26\n\n"
        f"require k8s.io/kubernetes {k8s_version}\n\n"
        f"replace (\n{replaces}\n)\n"
    )


def render_tools_go() -> str:
    """A build-tagged Go file that imports the commands, so ``go mod tidy`` keeps their deps."""
    imports = "\n".join(f'\t_ "{pkg}"' for pkg in command_packages())
    return f"//go:build tools\n\npackage tools\n\nimport (\n{imports}\n)\n"


def version_ldflags(k8s_version: str, build_date: str) -> str:
    """``-ldflags`` that stamp the version into the binaries, as upstream's hack/lib/version.sh does."""
    _, minor, _ = _split_version(k8s_version)
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={k8s_version}",
            f"-X {pkg}.gitMajor=1",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate={build_date}",
        ]
    return " ".join(flags)


def _split_version(version: str) -> tuple[int, int, int]:
    parts = version.removeprefix("v").split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"expected a version like v1.36.3, got {version!r}")
    return int(parts[0]), int(parts[1]), int(parts[2])
