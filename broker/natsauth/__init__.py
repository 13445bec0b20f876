"""NATS users per role: who may publish and subscribe to what (``permissions``), the server's
``authorization`` block (``server_config``), the keys it needs (``keys``), and the auth callout
that gives each node agent and task pod a user scoped to its own subjects (``callout``, with
``tokens`` and the minimal NKEY/JWT code in ``nkeys`` and ``jwt``). docs/security.md has the model."""
