"""Times as the read model serves them: ``datetime.isoformat()`` (``+00:00``, not pydantic's ``Z``)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import PlainSerializer, WithJsonSchema


def iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


Time = Annotated[
    dt.datetime,
    PlainSerializer(lambda v: v.isoformat(), return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
"""A time, written as ISO 8601 by ``isoformat()``."""

OptionalTime = Annotated[
    dt.datetime | None,
    PlainSerializer(iso, return_type=str | None),
    WithJsonSchema({"type": ["string", "null"], "format": "date-time"}),
]
"""A time or null, written as ISO 8601 by ``isoformat()``."""
