"""What a forked pod is, as one JSON line on stdout (run by tests/integration/test_pod_env_scrubbed
through the fork server). Imports only modules the fork server has loaded, so it also runs as a
user who cannot read the interpreter's files."""

import json
import os
from typing import Any


def observe() -> dict[str, Any]:
    """What this process sees of itself: environment (as it reads it and as /proc shows the one
    it started with), ids, and whether its HOME is writable."""
    with open("/proc/self/environ", "rb") as f:
        initial = f.read().decode(errors="replace")  # a forked pod's: its fork server's start env
    home = os.environ.get("HOME", "")
    return {
        "environ": dict(os.environ),
        "proc_environ": initial,
        "pid": os.getpid(),
        "pgid": os.getpgid(0),
        "sid": os.getsid(0),
        "uid": os.getuid(),
        "gid": os.getgid(),
        "groups": os.getgroups(),
        "home_writable": bool(home) and os.access(home, os.W_OK),
    }


if __name__ == "__main__":
    print(json.dumps(observe()), flush=True)
