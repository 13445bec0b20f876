"""The embedded default: a real nats-server plus a local cluster of node-agent processes."""
