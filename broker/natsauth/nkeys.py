"""The few NKEY operations an auth callout needs: ed25519 keys encoded the NATS way.

A public key is base32 (no padding) of a prefix byte naming its kind (``A`` account, ``U`` user,
``N`` server), the 32 raw bytes and a CRC-16 (XMODEM, little-endian); a seed (``SA...``) packs
two prefix bytes and the 32-byte private seed the same way. Written from the NKEYS format
description, without the ``nkeys`` package (which would pull in PyNaCl).
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

PREFIX_SEED = 18 << 3
PREFIX_ACCOUNT = 0
PREFIX_SERVER = 13 << 3
PREFIX_USER = 20 << 3


class NkeyError(ValueError):
    """Not a well-formed key of the expected kind."""


def _crc16(data: bytes) -> bytes:
    return binascii.crc_hqx(data, 0).to_bytes(2, "little")


def _encode(raw: bytes) -> str:
    return base64.b32encode(raw + _crc16(raw)).decode().rstrip("=")


def _decode(text: str) -> bytes:
    try:
        padded = text + "=" * (-len(text) % 8)
        raw = base64.b32decode(padded)
    except (binascii.Error, ValueError) as exc:
        raise NkeyError(f"not base32: {text[:8]}...") from exc
    body, crc = raw[:-2], raw[-2:]
    if len(raw) < 3 or _crc16(body) != crc:
        raise NkeyError(f"bad checksum: {text[:8]}...")
    return body


def encode_public(prefix: int, key: bytes) -> str:
    return _encode(bytes([prefix]) + key)


def decode_public(text: str, prefix: int) -> bytes:
    body = _decode(text)
    if len(body) != 33 or body[0] != prefix:
        raise NkeyError(f"{text[:8]}... is not a public key of the expected kind")
    return body[1:]


class KeyPair:
    """An ed25519 key of one kind (account, user...), from its seed."""

    def __init__(self, prefix: int, private: ed25519.Ed25519PrivateKey) -> None:
        self.prefix = prefix
        self._private = private

    @classmethod
    def create(cls, prefix: int) -> KeyPair:
        return cls(prefix, ed25519.Ed25519PrivateKey.from_private_bytes(os.urandom(32)))

    @classmethod
    def from_seed(cls, seed: str) -> KeyPair:
        body = _decode(seed.strip())
        if len(body) != 34 or body[0] & 0xF8 != PREFIX_SEED:
            raise NkeyError("not an NKEY seed")
        prefix = ((body[0] & 0x07) << 5) | ((body[1] & 0xF8) >> 3)
        return cls(prefix, ed25519.Ed25519PrivateKey.from_private_bytes(body[2:]))

    @property
    def seed(self) -> str:
        raw = self._private.private_bytes_raw()
        first = PREFIX_SEED | (self.prefix >> 5)
        second = (self.prefix & 0x1F) << 3
        return _encode(bytes([first, second]) + raw)

    @property
    def public_key(self) -> str:
        return encode_public(self.prefix, self._private.public_key().public_bytes_raw())

    def sign(self, data: bytes) -> bytes:
        return self._private.sign(data)


def verify(public_key: str, prefix: int, data: bytes, signature: bytes) -> bool:
    """Whether ``signature`` over ``data`` is by the key ``public_key`` (of kind ``prefix``)."""
    try:
        key = ed25519.Ed25519PublicKey.from_public_bytes(decode_public(public_key, prefix))
        key.verify(signature, data)
    except (NkeyError, InvalidSignature, ValueError):
        return False
    return True
