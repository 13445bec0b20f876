"""The node agent in kubelet mode: one OS process that is one Node of a real Kubernetes cluster.

It behaves like a kubelet on upstream defaults:

- **Heartbeat = the Lease.** ``kube-node-lease/<node>`` with ``leaseDurationSeconds`` 40, renewed
  every ``duration x 0.25`` (10 s, 4 % jitter); a failed renewal is retried after 0.2 s, doubling
  up to 7 s.
- **Node status** is computed every ``node_status_update_frequency_s`` (10 s) and PATCHed only
  when it differs from the Node object on the server (conditions, capacity, allocatable,
  addresses, daemonEndpoints, nodeInfo; heartbeat times ignored) or when
  ``node_status_report_frequency_s`` (5 min) has passed since the last report.
  ``lastHeartbeatTime`` changes only when a report is posted. So after the node lifecycle
  controller marked the Node Unknown, the next computation posts Ready=True again.
- **Pods**: it watches the pods bound to it (``fieldSelector=spec.nodeName=<node>``) and runs each
  pod's first container as a local process group through ``workers.pod_runtime`` (image ignored;
  command, args and env honoured, downward-API ``fieldRef`` included; the process also gets the
  Pod's name and ``metadata.uid`` as ``JOBQ_POD``/``JOBQ_POD_UID``, the writer identity a task
  stamps on its outputs; ``jobq-runner`` is this installation's task runner). Status goes
  through ``pods/status``; graceful deletion is SIGTERM, the grace period, SIGKILL, the final
  status, then DELETE with ``gracePeriodSeconds=0`` and a UID precondition, as the kubelet does.
  ``terminationMessagePolicy: FallbackToLogsOnError`` puts the log's last 80 lines / 2 KiB into
  ``state.terminated.message`` of a container that failed.
- **Containers outlive the agent**, as with a real container runtime: each pod is recorded under
  ``<work_dir>/<node>/pods/<uid>.json`` (pid, kernel start time, log, exit file) and its exit code
  is written to ``<uid>.exit`` when it ends. A restarted agent adopts the processes of pods that
  still exist (polls their liveness, reads the exit code), kills those whose pod is gone, and
  marks pods with neither a process nor an exit code Failed (``ContainerStatusUnknown``). Machine
  death (agent *and* pods) is ``devcluster.nodes.kill_node``.
- **Logs**: an HTTPS server on a free loopback port (posted as
  ``daemonEndpoints.kubeletEndpoint.Port``) serves ``GET /containerLogs/<ns>/<pod>/<container>``
  to the API server (client certificate of the cluster CA, identity
  ``kube-apiserver-kubelet-client`` or group ``system:masters``), so ``kubectl logs [-f]`` works.

Modules: ``settings`` (KubeletSettings, upstream cadence constants), ``node`` (registration,
node status, Lease), ``pods`` (watch, start/adopt, status, deletion, memory limits),
``pod_state`` (one pod's local state and status body), ``logserver`` (the HTTPS log API),
``agent`` (the Kubelet that runs them together), ``cli`` (``main``: the flags).
"""

from __future__ import annotations

from workers.kubelet.agent import Kubelet, api_client, run_kubelet
from workers.kubelet.cli import main
from workers.kubelet.logserver import KUBELET_CLIENT_CN, LogOptions, LogServer, tail_start
from workers.kubelet.node import CONDITION_TYPES, NodeReporter, quantity_value
from workers.kubelet.pod_state import LOST_MESSAGE
from workers.kubelet.pods import PodManager
from workers.kubelet.settings import JITTER, LEASE_BACKOFF_S, LEASE_RENEW_FRACTION, KubeletSettings
from workers.kubelet.timestamps import now_iso

__all__ = [
    "CONDITION_TYPES",
    "JITTER",
    "KUBELET_CLIENT_CN",
    "LEASE_BACKOFF_S",
    "LEASE_RENEW_FRACTION",
    "LOST_MESSAGE",
    "Kubelet",
    "KubeletSettings",
    "LogOptions",
    "LogServer",
    "NodeReporter",
    "PodManager",
    "api_client",
    "main",
    "now_iso",
    "quantity_value",
    "run_kubelet",
    "tail_start",
]
