"""How the kubelet spells times for the API server (RFC 3339, UTC, ``Z``), and reads them back."""

from __future__ import annotations

import datetime as dt


def now_iso(*, micro: bool = False) -> str:
    at = dt.datetime.now(dt.UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


def _iso(at: dt.datetime | None) -> str | None:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ") if at else None


def _parse_iso(raw: str) -> dt.datetime:
    return dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
