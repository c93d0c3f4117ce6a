"""The payments API's lists are pages by offset, newest first: a query takes
``limit`` rows from ``offset``, with the same bounds on every list."""

from __future__ import annotations

from pydantic import Field

from wadud.web.api import ApiModel

__all__ = ["OffsetQuery"]


class OffsetQuery(ApiModel):
    """``limit`` rows of a list from ``offset``; a list's own filters extend it."""

    limit: int = Field(default=50, ge=1, le=200)
    offset: int = Field(default=0, ge=0, le=1_000_000)
