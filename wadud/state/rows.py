"""Typed records read from database rows.

Most API models and internal records (dataclasses) name their fields as the
columns they come from, so one is filled from its row by name rather than
field by field; the fields a caller works out itself (a rating from two
columns, a URL, a nested model) are given by keyword instead. A pydantic
model validates as it always does, so a column holding an enum's text
becomes that enum.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel

__all__ = ["from_row"]

_T = TypeVar("_T")


def from_row(cls: type[_T], row: Mapping[str, Any], **given: Any) -> _T:
    """``cls`` (a pydantic model or a dataclass) with each field taken from
    ``given`` when named there, else from the row's column of the same name
    (a missing column is a ``KeyError``: the query and the record disagree)."""
    if issubclass(cls, BaseModel):
        names: list[str] = list(cls.model_fields)
    else:
        names = [f.name for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    return cls(**{k: row[k] for k in names if k not in given}, **given)
