"""What a local pod starts with: a scrubbed environment and, optionally, another user.

A pod never inherits its node agent's environment (NATS credentials, ``JOBQ_*`` settings, cloud
keys): it gets, as a container gets from its image and its Pod spec,

1. a minimal base taken from the agent (``BASE_NAMES``, ``LC_*``): what finds programs, the
   locale and time zone, the temporary directory, and what makes the interpreter import jobq
   (``PYTHONPATH``, ``PYTHONHOME``, ``VIRTUAL_ENV`` when the agent has them);
2. ``HOME``: a directory of its own (``home_dir``), writable by the pod's user;
3. the names the operator lists in ``JOBQ_POD_ENV_PASSTHROUGH`` (comma-separated), with the
   agent's values;
4. the pod spec's own environment (what the dispatcher put in it), then the node's keys
   (``JOBQ_NODE``, ``JOBQ_POD``, ``JOBQ_POD_UID``, and ``JOBQ_NATS_URL`` when the spec has none:
   the agent's URL without its user and password, with the agent's ``JOBQ_NATS_CA`` if the spec
   names no CA). ``JOBQ_NATS_CA`` in the spec (a public CA certificate's path) is kept as it is.

``JOBQ_POD_USER`` (a user name, or ``uid[:gid]``) runs every pod as that user; the agent must
then run as root. Used by the embedded node agent (forked and spawned pods alike) and, for the
environment only, by the simulated kubelet.
"""

from __future__ import annotations

import dataclasses
import grp
import os
import pwd
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

from broker import contract

ENV_PASSTHROUGH = "JOBQ_POD_ENV_PASSTHROUGH"
"""Comma-separated names of agent variables every pod also gets (node agent and kubelet)."""
ENV_POD_USER = "JOBQ_POD_USER"
"""The user pods run as: a name, or ``uid[:gid]``; empty: the agent's own user."""

BASE_NAMES = (
    "PATH",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    "PYTHONPATH",
    "PYTHONHOME",
    "VIRTUAL_ENV",
    "PYTHONUNBUFFERED",
    contract.ENV_LOG_FORMAT,
)
"""Agent variables every pod gets (when the agent has them), besides ``LC_*``."""
BASE_PREFIXES = ("LC_",)


class PodEnvError(ValueError):
    """A pod environment or pod user setting cannot work; the message names the variable."""


@dataclasses.dataclass(frozen=True, slots=True)
class PodUser:
    """Who a pod runs as (``JOBQ_POD_USER``)."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    """Supplementary groups (a named user's, from the group database; none for ``uid[:gid]``)."""
    name: str = ""

    @classmethod
    def parse(cls, value: str) -> PodUser:
        """``name`` or ``uid[:gid]`` (gid: the uid's passwd group if it has one, else the uid)."""
        raw_uid, _, raw_gid = value.strip().partition(":")
        if not raw_uid.isdigit():
            if raw_gid:
                raise PodEnvError(f"{ENV_POD_USER}={value!r}: give a user name or uid[:gid], not both")
            try:
                entry = pwd.getpwnam(raw_uid)
            except KeyError:
                raise PodEnvError(f"{ENV_POD_USER}={value!r}: no such user") from None
            groups = tuple(g for g in os.getgrouplist(entry.pw_name, entry.pw_gid) if g != entry.pw_gid)
            return cls(uid=entry.pw_uid, gid=entry.pw_gid, groups=groups, name=entry.pw_name)
        if raw_gid and not raw_gid.isdigit():
            try:
                gid = grp.getgrnam(raw_gid).gr_gid
            except KeyError:
                raise PodEnvError(f"{ENV_POD_USER}={value!r}: no such group") from None
        else:
            gid = int(raw_gid) if raw_gid else _passwd_gid(int(raw_uid))
        try:
            name = pwd.getpwuid(int(raw_uid)).pw_name
        except KeyError:
            name = ""
        return cls(uid=int(raw_uid), gid=gid, name=name)

    def check_can_switch(self) -> None:
        """PodEnvError unless this process may become the user (it must run as root)."""
        if os.geteuid() != 0:
            raise PodEnvError(
                f"{ENV_POD_USER} is set (uid {self.uid}) but the node agent runs as uid "
                f"{os.geteuid()}: only root can run pods as another user"
            )


def _passwd_gid(uid: int) -> int:
    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:
        return uid


def passthrough_from_env(environ: Mapping[str, str]) -> tuple[str, ...]:
    """``JOBQ_POD_ENV_PASSTHROUGH`` as names (blank entries ignored)."""
    names = tuple(n.strip() for n in environ.get(ENV_PASSTHROUGH, "").split(",") if n.strip())
    bad = [n for n in names if "=" in n or any(c.isspace() for c in n)]
    if bad:
        raise PodEnvError(f"{ENV_PASSTHROUGH}: {bad} are not variable names")
    return names


def user_from_env(environ: Mapping[str, str]) -> PodUser | None:
    value = environ.get(ENV_POD_USER, "").strip()
    return PodUser.parse(value) if value else None


def node_env(environ: Mapping[str, str], *, passthrough: Iterable[str] = ()) -> dict[str, str]:
    """The part of a pod's environment that comes from its node agent: the base and the operator's
    pass-through names, with the agent's values (``environ``). Also the fork server's environment."""
    wanted = set(BASE_NAMES) | set(passthrough)
    return {k: v for k, v in environ.items() if k in wanted or k.startswith(BASE_PREFIXES)}


def pod_env(
    base: Mapping[str, str],
    spec_env: Mapping[str, str],
    *,
    home: Path,
    node_keys: Mapping[str, str],
    default_nats_url: str = "",
    default_nats_ca: str = "",
) -> dict[str, str]:
    """A pod's whole environment (see the module docstring for the order)."""
    env = {**base, "HOME": str(home), **spec_env, **node_keys}
    if default_nats_url and not env.get(contract.ENV_NATS_URL):
        env[contract.ENV_NATS_URL] = contract.public_url(default_nats_url)
        if default_nats_ca and not env.get(contract.ENV_NATS_CA):
            env[contract.ENV_NATS_CA] = default_nats_ca
    return env


def make_home(path: Path, user: PodUser | None) -> Path:
    """Create a pod's HOME (mode 0700, owned by the pod's user when it has one)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if user is not None:
        os.chown(path, user.uid, user.gid)
    return path


def remove_home(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
