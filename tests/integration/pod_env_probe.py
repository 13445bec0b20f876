"""What a forked pod is, as one JSON line on stdout (run by tests/integration/test_pod_env_scrubbed
through the fork server). Imports only modules the fork server has loaded, so it also runs as a
user who cannot read the interpreter's files."""

import json
import os

with open("/proc/self/environ", "rb") as f:
    initial = f.read().decode(errors="replace")
home = os.environ.get("HOME", "")
print(
    json.dumps(
        {
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
    ),
    flush=True,
)
