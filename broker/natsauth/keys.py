"""The secrets of an installation's NATS users, kept in one directory (mode 0700, files 0600):

- ``issuer.nk``: the account NKEY seed the auth callout signs users with (the server knows only
  its public key);
- ``token.key``: the HMAC key node and pod tokens are minted with (``tokens``);
- ``<role>.password`` for each fixed role (``permissions.FIXED_ROLES``).

``jobq up`` creates them in ``<data_dir>/nats-auth`` and reuses them; the chart keeps them in a
Secret. A dispatcher given the directory (JOBQ_NATS_AUTH_DIR) serves the callout and mints pod
tokens.
"""

from __future__ import annotations

import dataclasses
import secrets
from pathlib import Path

from broker.natsauth import nkeys, permissions

ISSUER_FILE = "issuer.nk"
TOKEN_KEY_FILE = "token.key"


def user_name(role: str) -> str:
    """The NATS user of a fixed role."""
    return f"jobq-{role}"


def password_file(directory: Path, role: str) -> Path:
    return directory / f"{role}.password"


class KeysError(RuntimeError):
    """The directory is missing a file or holds an unreadable one; the message names it."""


@dataclasses.dataclass(frozen=True, slots=True)
class CalloutKeys:
    """What the auth callout needs: the issuer's key and the token key."""

    issuer: nkeys.KeyPair
    token_key: bytes


def _write_secret(path: Path, text: str) -> None:
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(text + "\n")


def ensure(directory: Path) -> None:
    """Create whichever secret is missing (an existing one is kept: clients may hold it)."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    if not (directory / ISSUER_FILE).exists():
        _write_secret(directory / ISSUER_FILE, nkeys.KeyPair.create(nkeys.PREFIX_ACCOUNT).seed)
    if not (directory / TOKEN_KEY_FILE).exists():
        _write_secret(directory / TOKEN_KEY_FILE, secrets.token_hex(32))
    for role in permissions.FIXED_ROLES:
        if not password_file(directory, role).exists():
            _write_secret(password_file(directory, role), secrets.token_urlsafe(32))


def _read(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise KeysError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not text:
        raise KeysError(f"{path} is empty")
    return text


def password(directory: Path, role: str) -> str:
    return _read(password_file(directory, role))


def callout_keys(directory: Path) -> CalloutKeys:
    try:
        issuer = nkeys.KeyPair.from_seed(_read(directory / ISSUER_FILE))
    except nkeys.NkeyError as exc:
        raise KeysError(f"{directory / ISSUER_FILE}: {exc}") from None
    try:
        token_key = bytes.fromhex(_read(directory / TOKEN_KEY_FILE))
    except ValueError:
        raise KeysError(f"{directory / TOKEN_KEY_FILE} is not hex") from None
    if issuer.prefix != nkeys.PREFIX_ACCOUNT:
        raise KeysError(f"{directory / ISSUER_FILE} is not an account seed (SA...)")
    return CalloutKeys(issuer=issuer, token_key=token_key)


