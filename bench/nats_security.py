"""What NATS users per role and TLS cost a client, on one real nats-server per mode, in one run.

A task pod connects once per attempt, so its connect is on every job's path. Each mode starts a
nats-server with JetStream and measures N sequential connects (each followed by one round trip,
so the connection is really usable) and a JetStream publish loop on the connected client (one
publish at a time, each waiting for its ack, so the round trip shows):

- ``plain``: no TLS, no users (jobq before issue 15; the peer every ratio is taken against);
- ``tls``: TLS with jobq's generated CA (broker/embedded/nats_tls.py);
- ``tls+user``: TLS, connecting as a configured user (the submitter's, a password);
- ``tls+callout``: TLS, connecting with a pod token, answered by the auth callout (broker/natsauth)
  served by one client on the same server, which is what `jobq up` does.

Modes alternate round by round; each figure is the median of its rounds.

    .venv/bin/python -m bench.nats_security                 # ~30 s
    .venv/bin/python -m bench.nats_security --connects 200 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
from nats.js import api

from broker.embedded import nats_tls
from broker.embedded.natsserver import NatsServer
from broker.natsauth import callout, keys, server_config, tokens

MODES = ("plain", "tls", "tls+user", "tls+callout")


@contextlib.asynccontextmanager
async def server(mode: str, where: Path) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """A nats-server for ``mode`` and the connect options of a client of it."""
    tls = nats_tls.ensure(where) if mode != "plain" else None
    authorization = ""
    if "+" in mode:
        keys.ensure(where / "auth")
        authorization = server_config.authorization_block(where / "auth")
    srv = NatsServer(store_dir=where / "nats", tls=tls, authorization=authorization)
    await srv.start()
    options: dict[str, Any] = nats_tls.client_options(tls)
    service = None
    try:
        if mode == "tls+user":
            options.update(user="jobq-submitter", password=keys.password(where / "auth", "submitter"))
        elif mode == "tls+callout":
            operator = await nats.connect(srv.url, user="jobq-operator",
                                          password=keys.password(where / "auth", "operator"), **options)
            service = (operator, await callout.server(operator, keys.callout_keys(where / "auth")).start())
            key = keys.callout_keys(where / "auth").token_key
            options.update(token=tokens.pod_token(key, "bench-job", 1), inbox_prefix="_INBOX.pod.bench-job.1")
        yield srv.url, options
    finally:
        if service is not None:
            await service[1].stop()
            await service[0].close()
        await srv.stop()


async def connects(url: str, options: dict[str, Any], n: int) -> float:
    """Median seconds from connect to a first round trip answered."""
    took = []
    for _ in range(n):
        started = time.perf_counter()
        nc = await nats.connect(url, max_reconnect_attempts=0, **options)
        await nc.flush(timeout=5)
        took.append(time.perf_counter() - started)
        await nc.close()
    return statistics.median(took)


async def main(connect_n: int, publish_n: int, rounds: int) -> None:
    results: dict[str, dict[str, list[float]]] = {m: {"connect": [], "publish": []} for m in MODES}
    for r in range(rounds):
        for mode in MODES if r % 2 == 0 else tuple(reversed(MODES)):
            with tempfile.TemporaryDirectory(prefix="jobq-bench-sec-") as tmp:
                async with server(mode, Path(tmp)) as (url, options):
                    results[mode]["connect"].append(await connects(url, options, connect_n))
                    admin = dict(options)
                    if "+" in mode:  # create the stream as the operator
                        admin = {"tls": options["tls"], "user": "jobq-operator",
                                 "password": keys.password(Path(tmp) / "auth", "operator")}
                    nc = await nats.connect(url, **admin)
                    await nc.jetstream().add_stream(
                        api.StreamConfig(name="BENCH", subjects=["jobq.attempt.>", "jobq.submit.>"]))
                    await nc.close()
                    subject = "jobq.attempt.bench-job.1.hb" if mode == "tls+callout" else "jobq.submit.bench"
                    results[mode]["publish"].append(await publish_loop(url, options, subject, publish_n))
    base = {k: statistics.median(v) for k, v in results["plain"].items()}
    print(f"{'mode':<12} {'connect ms':>11} {'x plain':>8} {'publishes/s':>12} {'x plain':>8}")
    for mode in MODES:
        c, p = statistics.median(results[mode]["connect"]), statistics.median(results[mode]["publish"])
        print(f"{mode:<12} {c * 1000:>11.2f} {c / base['connect']:>8.2f} {p:>12.0f} "
              f"{p / base['publish']:>8.2f}")


async def publish_loop(url: str, options: dict[str, Any], subject: str, n: int) -> float:
    """JetStream publishes per second, one at a time (each waits for its ack), on a subject the
    mode's user may publish on (a pod its heartbeat, a submitter a submission)."""
    nc = await nats.connect(url, **options)
    try:
        js = nc.jetstream()
        started = time.perf_counter()
        for _ in range(n):
            await js.publish(subject, b"x" * 128)
        return n / (time.perf_counter() - started)
    finally:
        await nc.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connects", type=int, default=100)
    parser.add_argument("--publishes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.connects, args.publishes, args.rounds))
