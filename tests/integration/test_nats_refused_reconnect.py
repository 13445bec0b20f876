"""A node agent or task pod connects through the auth callout. When a broker dies, the client and
the callout's responders reconnect at the same time, and a server can ask the callout before any
responder is back: it refuses the client once the callout times out. That refusal passes, so the
client must go on reconnecting. (nats-py closes a client for good on it; a node agent whose
client was closed evicted its pods and exited: CI's broker-kill run lost two of three nodes.)

Here the outage is made certain instead of left to timing: the callout's responder is stopped,
the server restarts on the same port, the client is refused, then the responder comes back."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import nats
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from broker import contract, natsutil
from broker.embedded import nats_tls
from broker.embedded.natsserver import NatsServer
from broker.embedded.stack import free_port
from broker.natsauth import callout, keys, server_config, tokens
from broker.responder import Responder


async def start_callout(url: str, auth: Path, tls: nats_tls.TlsFiles) -> tuple[NATS, Responder]:
    operator = await nats.connect(url, user=keys.user_name("operator"),
                                  password=keys.password(auth, "operator"), **nats_tls.client_options(tls))
    return operator, await callout.server(operator, keys.callout_keys(auth)).start()


async def test_a_client_refused_while_reconnecting_goes_on_once_the_callout_answers(tmp_path: Path) -> None:
    auth = tmp_path / "auth"
    keys.ensure(auth)
    tls = nats_tls.ensure(tmp_path)  # as jobq runs it: TLS, so nats-server's auth timeout is 6 s
    server = NatsServer(store_dir=tmp_path / "nats", port=free_port(), tls=tls,
                        authorization=server_config.authorization_block(auth))
    await server.start()
    operator, responder = await start_callout(server.url, auth, tls)
    token = tokens.node_token(keys.callout_keys(auth).token_key, "node-1")
    environ = {contract.ENV_NATS_TOKEN: token, contract.ENV_NATS_CA: str(tls.ca_cert)}
    node = await natsutil.connect(server.url, name="jobq-node-node-1", environ=environ)
    try:
        await node.flush(timeout=5)
        await responder.stop()
        await operator.close()
        await server.stop()
        await server.start()  # same port and store: the node's client reconnects to it
        log = server.store_dir / "nats-server.log"
        async with asyncio.timeout(60):
            while "authentication error" not in log.read_text(errors="replace"):
                await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # nats-py has read the refusal (it used to close the client here)
        assert not node.is_closed, f"the client gave up: {node.last_error!r}"

        operator, responder = await start_callout(server.url, auth, tls)
        # nats-py counts a connection as made before the server has authorized it, so the proof is
        # what a reader receives: the node's status, published until one arrives.
        status = contract.node_status_subject("node-1")
        got = await operator.subscribe(status)
        await operator.flush()
        async with asyncio.timeout(60):
            while True:
                assert not node.is_closed, f"the client gave up: {node.last_error!r}"
                if node.is_connected:
                    await node.publish(status, b"after the refusal")
                with contextlib.suppress(nats.errors.TimeoutError):
                    if (await got.next_msg(timeout=1)).data == b"after the refusal":
                        break
    finally:
        await node.close()
        await responder.stop()
        await operator.close()
        await server.stop()


async def test_a_pod_whose_callout_request_was_lost_connects_on_its_next_try(tmp_path: Path) -> None:
    """A task pod's first connect, while the one responder the server asked holds the request
    and never answers (a dispatcher SIGKILLed with it: CI's standby takeover). The server refuses
    the pod after its auth timeout, closing TLS before it writes -ERR; the pod used to take that
    for a TLS misconfiguration, give up at once and exit 4. It must connect on its next try."""
    auth = tmp_path / "auth"
    keys.ensure(auth)
    tls = nats_tls.ensure(tmp_path)
    server = NatsServer(store_dir=tmp_path / "nats", port=free_port(), tls=tls,
                        authorization=server_config.authorization_block(auth))
    await server.start()
    operator = await nats.connect(server.url, user=keys.user_name("operator"),
                                  password=keys.password(auth, "operator"), **nats_tls.client_options(tls))
    asked = asyncio.Event()

    async def holds_the_request(msg: Msg) -> None:
        asked.set()  # and never answers

    black_hole = await operator.subscribe(callout.CALLOUT_SUBJECT, queue=callout.QUEUE_GROUP,
                                          cb=holds_the_request)
    await operator.flush()
    key = keys.callout_keys(auth).token_key
    environ = {contract.ENV_NATS_TOKEN: tokens.pod_token(key, "job-1", 1),
               contract.ENV_NATS_CA: str(tls.ca_cert)}
    pod = asyncio.create_task(natsutil.connect(  # as workers/runner.py connects
        server.url, name="jobq-runner job-1.1", environ=environ, connect_timeout_s=2, reconnect_wait_s=1,
        inbox_prefix=contract.pod_inbox_prefix("job-1", 1), give_up_after_s=60))
    responder = None
    try:
        await asyncio.wait_for(asked.wait(), 30)
        log = server.store_dir / "nats-server.log"
        async with asyncio.timeout(30):  # held until the server has refused the pod
            while "authentication error" not in log.read_text(errors="replace"):
                await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        assert not pod.done(), pod.exception()
        await black_hole.unsubscribe()
        responder = await callout.server(operator, keys.callout_keys(auth)).start()
        nc = await asyncio.wait_for(pod, 90)
        await nc.flush(timeout=10)
        await nc.close()
    finally:
        pod.cancel()
        if responder is not None:
            await responder.stop()
        await operator.close()
        await server.stop()
