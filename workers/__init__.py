"""What runs on a node: the worker runtime that executes one task attempt inside a pod
(``python -m workers.runner``), its built-in tasks, and the node agent that starts pods."""
