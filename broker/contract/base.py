"""What every contract model shares: the pydantic base, the clock, and bounded text."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict


class Model(BaseModel):
    """A contract message: unknown fields are refused, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters (marked with an ellipsis), always encodable UTF-8."""
    if len(text) > limit:
        text = text[: max(0, limit - 1)] + "…"
    return text.encode("utf-8", errors="replace").decode("utf-8")
