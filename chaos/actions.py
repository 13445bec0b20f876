"""Chaos Toolkit actions against a jobq stack: real signals to real processes.

Kills are SIGKILLs of the actual OS processes (node agents, the leading dispatcher, a nats-server),
found from their own heartbeats, the leader lease or the stack's state; restarts ask the stack
supervisor. Every disruption is written to the run's state file (see chaos.target) so probes and
the report can say what was hit and when.

This module is the extension's public face, the ``chaos.actions`` that experiments name; the
actions live by what they act on: ``burst`` (the work), ``training`` (a long job that
checkpoints, and the node it runs on), ``node_actions``, ``broker_actions`` (dispatchers and
nats-servers).
"""

from __future__ import annotations

from chaos.broker_actions import (
    kill_dispatcher_leader,
    kill_nats_server,
    restart_dispatchers,
    restart_nats_servers,
)
from chaos.burst import submit_burst, wait_for_drain
from chaos.node_actions import kill_nodes, partition_node, restart_nodes, rolling_node_kill
from chaos.training import kill_training_node, submit_training, wait_for_training

__all__ = [
    "kill_dispatcher_leader",
    "kill_nats_server",
    "kill_nodes",
    "kill_training_node",
    "partition_node",
    "restart_dispatchers",
    "restart_nats_servers",
    "restart_nodes",
    "rolling_node_kill",
    "submit_burst",
    "submit_training",
    "wait_for_drain",
    "wait_for_training",
]
