"""The pure parts of broker/natsauth: NKEY encoding, JWT signatures, tokens, the callout's answer.
The real server's view of all of it is tests/integration/test_nats_roles.py."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from broker import contract
from broker.natsauth import callout, jwt, keys, nkeys, permissions, tokens

KEY = b"k" * 32


def test_seeds_round_trip_and_keys_carry_their_kind() -> None:
    account = nkeys.KeyPair.create(nkeys.PREFIX_ACCOUNT)
    assert account.public_key.startswith("A") and account.seed.startswith("SA")
    again = nkeys.KeyPair.from_seed(account.seed)
    assert again.public_key == account.public_key and again.prefix == nkeys.PREFIX_ACCOUNT
    assert nkeys.KeyPair.create(nkeys.PREFIX_USER).public_key.startswith("U")
    with pytest.raises(nkeys.NkeyError):
        nkeys.decode_public(account.public_key, nkeys.PREFIX_USER)
    broken = account.public_key[:-1] + ("A" if account.public_key[-1] != "A" else "B")
    with pytest.raises(nkeys.NkeyError):
        nkeys.decode_public(broken, nkeys.PREFIX_ACCOUNT)


def test_a_jwt_verifies_only_unchanged_and_only_against_its_issuers_kind() -> None:
    issuer = nkeys.KeyPair.create(nkeys.PREFIX_ACCOUNT)
    token = jwt.encode({"sub": "x", "nats": {"type": "user"}}, issuer)
    claims = jwt.decode(token, issuer_prefix=nkeys.PREFIX_ACCOUNT)
    assert claims["iss"] == issuer.public_key and claims["sub"] == "x" and claims["jti"]
    header, body, signature = token.split(".")
    tampered = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    tampered["sub"] = "y"
    forged = base64.urlsafe_b64encode(json.dumps(tampered).encode()).decode().rstrip("=")
    with pytest.raises(jwt.JwtError, match="signature"):
        jwt.decode(f"{header}.{forged}.{signature}", issuer_prefix=nkeys.PREFIX_ACCOUNT)
    with pytest.raises(jwt.JwtError, match="signature"):
        jwt.decode(token, issuer_prefix=nkeys.PREFIX_SERVER)
    with pytest.raises(jwt.JwtError):
        jwt.decode("not a jwt", issuer_prefix=nkeys.PREFIX_ACCOUNT)


def test_tokens_name_one_node_or_attempt_and_cannot_be_widened() -> None:
    assert tokens.verify(KEY, tokens.node_token(KEY, "node-1")) == tokens.Identity(kind="node", node="node-1")
    pod = tokens.verify(KEY, tokens.pod_token(KEY, "job-1", 3))
    assert (pod.kind, pod.job_id, pod.attempt) == ("pod", "job-1", 3)
    node = tokens.node_token(KEY, "node-1")
    for forged in (node.replace("node-1", "node-2"), node.replace("node:node-1", "node:*"),
                   tokens.node_token(b"other" * 8, "node-1"), "jobq1:node:node-1", "", "x:y:z"):
        with pytest.raises(tokens.TokenError):
            tokens.verify(KEY, forged)
    for name in ("a.b", "*", ">", "has space"):  # would widen the permissions' subjects
        with pytest.raises(tokens.TokenError):
            tokens.verify(KEY, tokens.node_token(KEY, name))
    with pytest.raises(tokens.TokenError):
        tokens.verify(KEY, tokens.pod_token(KEY, "Job.1", 1))


def test_a_pods_permissions_name_its_own_attempt() -> None:
    claims = permissions.pod("job-1", 2).claims()
    assert contract.heartbeat_subject("job-1", 2) in claims["pub"]["allow"]
    assert "$KV.jobq_results.job-1.2" in claims["pub"]["allow"]
    assert not any(s.startswith(("jobq.attempt.*", "jobq.node", "$KV.jobq_jobs", "jobq.submit"))
                   for s in claims["pub"]["allow"])
    assert claims["sub"]["allow"] == [f"{contract.pod_inbox_prefix('job-1', 2)}.>"]
    assert permissions.node("n1").claims()["resp"] == {"max": 1, "ttl": 0}


def _request(server: nkeys.KeyPair, user: nkeys.KeyPair, token: str) -> str:
    return jwt.encode({"sub": user.public_key, "aud": "nats-authorization-request", "nats": {
        "type": "authorization_request", "version": 2, "user_nkey": user.public_key,
        "server_id": {"id": server.public_key, "name": "s"}, "connect_opts": {"auth_token": token}}}, server)


def test_the_callout_grants_a_scoped_user_or_refuses(tmp_path: Path) -> None:
    keys.ensure(tmp_path)
    found = keys.callout_keys(tmp_path)
    server = nkeys.KeyPair.create(nkeys.PREFIX_SERVER)
    user = nkeys.KeyPair.create(nkeys.PREFIX_USER)
    granted = callout.answer(_request(server, user, tokens.pod_token(found.token_key, "j", 1)), found)
    response = jwt.decode(granted.response, issuer_prefix=nkeys.PREFIX_ACCOUNT)
    assert granted.identity == "pod:j:1" and response["aud"] == server.public_key
    assert response["sub"] == user.public_key
    issued = jwt.decode(response["nats"]["jwt"], issuer_prefix=nkeys.PREFIX_ACCOUNT)
    assert issued["sub"] == user.public_key and issued["aud"] == callout.GLOBAL_ACCOUNT
    assert "jobq.attempt.j.1.hb" in issued["nats"]["pub"]["allow"]

    refused = callout.answer(_request(server, user, tokens.pod_token(b"x" * 32, "j", 1)), found)
    body = jwt.decode(refused.response, issuer_prefix=nkeys.PREFIX_ACCOUNT)["nats"]
    assert refused.refusal and "jwt" not in body and body["error"] == refused.refusal
    # A request not signed by a server is not answered at all.
    with pytest.raises(jwt.JwtError):
        callout.answer(_request(nkeys.KeyPair.create(nkeys.PREFIX_ACCOUNT), user, "t"), found)


def test_secrets_are_private_and_kept(tmp_path: Path) -> None:
    keys.ensure(tmp_path / "a")
    before = keys.password(tmp_path / "a", "submitter")
    keys.ensure(tmp_path / "a")
    assert keys.password(tmp_path / "a", "submitter") == before
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in (tmp_path / "a").iterdir())
    (tmp_path / "a" / keys.TOKEN_KEY_FILE).write_text("zz")
    with pytest.raises(keys.KeysError, match="hex"):
        keys.callout_keys(tmp_path / "a")
