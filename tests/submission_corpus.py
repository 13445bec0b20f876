"""Hostile submissions, shared by the property tests and the live storm test.

Everything takes a ``random.Random`` so that the same mutations serve hypothesis (``st.randoms()``,
shrinkable) and a seeded storm on the real stack.
"""

from __future__ import annotations

import json
import random
from typing import Any

from broker import contract

NATS_MAX_PAYLOAD = 1024 * 1024
"""nats-server's default max_payload: the most any message (a dead letter too) may carry."""

QUEUES = ("default", "gpu", "storm", "a", "q-" + "x" * 29)
BAD_SUBJECTS = (
    "jobq.submit.UPPER",
    "jobq.submit.UPPER.x",
    "jobq.submit.gpu.extra",
    "jobq.submit.a.b.c",
    "jobq.submit.-bad",
    "jobq.submit.bad-",
    "jobq.submit.under_score",
    "jobq.submit." + "q" * 33,
    "jobq.submit.ünï",
)
ODD_VALUES: tuple[Any, ...] = (
    None,
    True,
    False,
    0,
    -1,
    1,
    2**63,
    10**40,
    -(10**40),
    1e308,
    -0.0,
    0.5,
    "",
    "x",
    "UPPER",
    "a" * 41,
    "\u0000",
    '"\\',
    "\u2028\u2029",
    "😀" * 10,
    "\ud7ff",
    [],
    {},
    [1, [2, [3]]],
    {"cpu": -1},
    {"memory": "lots"},
    ["python", "-c", "pass"],
    [""],
    {"max_attempts": 0},
)
VALID_TASKS = ("demo.sleep", "sklearn.train", "demo.exit", "mypkg.jobs:train")


def valid_job(rng: random.Random, job_id: str | None = None, *, queue: str | None = None) -> dict[str, Any]:
    """A valid job as a JSON-ready dict (queue left out half the time unless given)."""
    job: dict[str, Any] = {"id": job_id or f"j{rng.randrange(10**9)}"}
    if rng.random() < 0.8:
        job["task"] = rng.choice(VALID_TASKS)
        job["args"] = {"seconds": rng.random(), "note": rng.choice(["", "é", '"quoted"', "\\n"])}
    else:
        job["command"] = ["python", "-c", "print('hi')"]
    if queue is not None:
        job["queue"] = queue
    elif rng.random() < 0.5:
        job["queue"] = "default"
    if rng.random() < 0.5:
        job["profile"] = rng.choice(sorted(contract.PROFILES))
    if rng.random() < 0.3:
        job["retry"] = {"max_attempts": rng.randint(1, 5), "backoff_base_s": 0.1}
    if rng.random() < 0.3:
        job["priority"] = rng.randint(-1000, 1000)
    if rng.random() < 0.2:
        job["labels"] = {"team": "ml", "run": str(rng.randrange(100))}
    if rng.random() < 0.2:
        job["idempotency_key"] = f"key-{rng.randrange(10**6)}"
    if rng.random() < 0.2:
        job["timeout_s"] = rng.choice([1, 60.5, 7 * 86400])
    return job


def deep(depth: int, *, kind: str = "[") -> bytes:
    """JSON nested ``depth`` levels deep (lists or objects)."""
    if kind == "[":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


def escape_heavy_job(size: int, job_id: str = "escapes") -> bytes:
    """A job of about ``size`` bytes whose args are characters JSON escapes (quotes, control
    characters): re-encoding it as a JSON string makes it up to six times bigger."""
    head = json.dumps({"id": job_id, "task": "demo.sleep", "args": {"x": ""}})[:-3]
    unit = '\\"\\u0001\\\\'
    body = unit * max(0, (size - len(head) - 3) // len(unit))
    data = (head + body + '"}}').encode()
    return data + b" " * max(0, size - len(data))


def invalid_utf8(size: int) -> bytes:
    """``size`` bytes that are not UTF-8 (a lone continuation byte and a truncated sequence)."""
    unit = b"\xff\xfe\x80\xc3"
    return (unit * (size // len(unit) + 1))[:size]


def mutate(rng: random.Random, job: dict[str, Any]) -> bytes:
    """One random mutation of a (valid) job, as bytes: usually invalid, sometimes still valid."""
    job = json.loads(json.dumps(job))
    kind = rng.randrange(16)
    if kind == 0 and job:
        job.pop(rng.choice(sorted(job)))
    elif kind == 1:
        field = rng.choice([*sorted(job), *contract.JobSpec.model_fields])
        job[field] = rng.choice(ODD_VALUES)
    elif kind == 2:
        return json.dumps(rng.choice(ODD_VALUES)).encode()
    elif kind == 3:
        data = bytearray(json.dumps(job).encode())
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    elif kind == 4:
        data = json.dumps(job).encode()
        return data[: rng.randrange(len(data))]
    elif kind == 5:
        data = json.dumps(job).encode()
        cut = rng.randrange(len(data) + 1)
        return data[:cut] + rng.choice([b"\xff", b"\xc3", b"\x00", b"\xed\xa0\x80", b"\\"]) + data[cut:]
    elif kind == 6:
        depth = rng.choice([10, 63, 200, 255, 256, 1000, 5000])
        text = json.dumps(job)
        return text[:-1].encode() + b', "args": {"x": ' + deep(depth, kind=rng.choice("[{")) + b"}}"
    elif kind == 7:
        job[rng.choice(["surprise", "Id", "queue ", "__proto__", "contract2"])] = 1
    elif kind == 8:
        job["queue"] = rng.choice(QUEUES)
    elif kind == 9:
        text = json.dumps(job)
        return (
            text[:-1] + ', "args": {"x": ' + rng.choice(["NaN", "Infinity", "-Infinity", "1e999"]) + "}}"
        ).encode()
    elif kind == 10:
        text = json.dumps(job)
        return (text[:-1] + f', "id": {json.dumps(rng.choice(["other", "UPPER", 1]))}}}').encode()
    elif kind == 11:
        job["args"] = {"s": rng.choice(['"' * 50, "\\" * 50, "\u0001" * 50, "\ud800", "é" * 50])}
    elif kind == 12:
        return rng.choice([b"\xef\xbb\xbf", b" \n\t", b"\x00"]) + json.dumps(job).encode()
    elif kind == 13:
        job["id"] = rng.choice(["", "UPPER", "a" * 40, "a" * 41, "-a", "a-", "a_b", "é", "ok-id"])
    elif kind == 14:
        job.pop("command", None)
        job["task"] = rng.choice(["nope.missing", "x" * 300, "a:b:c", "", "1abc", "mod:fn", "demo.sleep"])
    else:
        job[rng.choice(["priority", "timeout_s"])] = rng.choice([1001, -1001, 0, 7 * 86400 + 1, 10**20, "1"])
    # surrogatepass: a lone surrogate in a string becomes bytes that are not UTF-8, as sent.
    return json.dumps(job, ensure_ascii=rng.random() < 0.5).encode("utf-8", errors="surrogatepass")
