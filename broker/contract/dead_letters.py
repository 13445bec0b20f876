"""Dead letters: what is published to ``jobq.dead.<reason>`` about a job or message given up on."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping

from pydantic import Field, PrivateAttr

from broker.contract.base import Model, clip, utcnow
from broker.contract.jobs import Attempt
from broker.contract.limits import (
    DEAD_LETTER_EXCERPT_BYTES,
    DEAD_LETTER_INLINE_BYTES,
    DEAD_LETTER_MAX_BYTES,
    DEAD_LETTER_MESSAGE_CHARS,
)
from broker.contract.names import OBJECT_STORE_DEAD, dead_original_key
from broker.contract.states import FailureReason


class DeadLetter(Model):
    """Published to ``jobq.dead.<reason>``: enough to see what went wrong and to re-drive it.

    A letter about a message (an invalid or undeliverable submission, or the spec of a job that
    died) is built with ``of_original``: it carries the original's ``size``, ``sha256`` and an
    ``excerpt``, the whole original when it is small (``payload``), and names the key of the
    whole original in object store ``jobq_dead`` (``original``). ``encode`` keeps the letter under
    DEAD_LETTER_MAX_BYTES whatever the original was."""

    job_id: str | None
    reason: FailureReason
    message: str
    subject: str | None = None
    payload: str | None = Field(
        default=None,
        description=f"The original message, whole, when it is valid UTF-8 of at most "
        f"{DEAD_LETTER_INLINE_BYTES} bytes; otherwise read `original`",
    )
    headers: dict[str, str] = Field(default_factory=dict)
    attempts: tuple[Attempt, ...] = ()
    at: dt.datetime = Field(default_factory=utcnow)
    stream_seq: int | None = Field(
        default=None, description="The submission's sequence in stream JOBQ_SUBMIT, if it was one"
    )
    size: int | None = Field(default=None, description="Bytes in the original message")
    sha256: str | None = Field(default=None, description="SHA-256 of the original message, hex")
    excerpt: str | None = Field(
        default=None,
        description=f"The original's first {DEAD_LETTER_EXCERPT_BYTES} bytes, invalid UTF-8 replaced",
    )
    original: str | None = Field(
        default=None, description=f"Key of the whole original in object store {OBJECT_STORE_DEAD}"
    )
    _original_bytes: bytes | None = PrivateAttr(default=None)

    @classmethod
    def of_original(
        cls,
        data: bytes,
        *,
        job_id: str | None,
        reason: FailureReason,
        message: str,
        subject: str | None = None,
        headers: Mapping[str, str] | None = None,
        stream_seq: int | None = None,
        attempts: tuple[Attempt, ...] = (),
        at: dt.datetime | None = None,
    ) -> DeadLetter:
        """The letter about ``data``, every field bounded; it keeps ``data`` in memory (never
        serialized) for the publisher to store under ``original``."""
        digest = hashlib.sha256(data).hexdigest()
        payload: str | None = None
        if len(data) <= DEAD_LETTER_INLINE_BYTES:
            try:
                payload = data.decode("utf-8")
            except UnicodeDecodeError:
                payload = None
        letter = cls(
            job_id=clip(job_id, 64) if job_id is not None else None,
            reason=reason,
            message=clip(message, DEAD_LETTER_MESSAGE_CHARS),
            subject=clip(subject, 256) if subject is not None else None,
            payload=payload,
            headers=_bounded_headers(headers or {}),
            attempts=attempts,
            at=at or utcnow(),
            stream_seq=stream_seq,
            size=len(data),
            sha256=digest,
            excerpt=data[:DEAD_LETTER_EXCERPT_BYTES].decode("utf-8", errors="replace"),
            original=dead_original_key(digest),
        )
        letter._original_bytes = data
        return letter

    @property
    def original_bytes(self) -> bytes | None:
        """The whole original, in the process that built the letter with ``of_original`` only."""
        return self._original_bytes

    def encode(self) -> bytes:
        """This letter's JSON, at most DEAD_LETTER_MAX_BYTES: if it would be bigger, the inline
        ``payload`` goes first (``original`` still names the whole of it), then all but the
        last few attempts and their log tails, then headers, and long texts are cut."""
        data = self.model_dump_json().encode()
        if len(data) <= DEAD_LETTER_MAX_BYTES:
            return data
        slim = self.model_copy(update={"payload": None})
        data = slim.model_dump_json().encode()
        if len(data) <= DEAD_LETTER_MAX_BYTES:
            return data
        recent = tuple(
            a.model_copy(update={"log_tail": "", "message": clip(a.message, 200), "waiting_reason": ""})
            for a in self.attempts[-5:]
        )
        slim = slim.model_copy(update={"attempts": recent})
        data = slim.model_dump_json().encode()
        if len(data) <= DEAD_LETTER_MAX_BYTES:
            return data
        # Every text is now at most a few thousand characters: a few tens of KiB as JSON.
        bare = slim.model_copy(
            update={
                "job_id": clip(self.job_id, 64) if self.job_id is not None else None,
                "message": clip(self.message, DEAD_LETTER_MESSAGE_CHARS),
                "subject": clip(self.subject, 256) if self.subject is not None else None,
                "headers": {},
                "attempts": (),
                "excerpt": clip(self.excerpt, 1024) if self.excerpt is not None else None,
                "sha256": clip(self.sha256, 64) if self.sha256 is not None else None,
                "original": clip(self.original, 128) if self.original is not None else None,
            }
        )
        return bare.model_dump_json().encode()


_DEAD_LETTER_HEADERS = 32


def _bounded_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """At most 32 headers, names cut to 128 and values to 1024 characters."""
    bounded: dict[str, str] = {}
    for name, value in list(headers.items())[:_DEAD_LETTER_HEADERS]:
        bounded[clip(str(name), 128)] = clip(str(value), 1024)
    return bounded
