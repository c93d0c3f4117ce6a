"""API models read from database rows.

Most response models name their fields as the columns they come from, so a
model is filled from its row by name rather than field by field; the fields a
handler works out itself (a rating from two columns, a URL, a nested model)
are given by keyword instead. Construction validates as it always does, so a
column holding an enum's text becomes that enum.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel

__all__ = ["from_row"]

_M = TypeVar("_M", bound=BaseModel)


def from_row(model: type[_M], row: Mapping[str, Any], **given: Any) -> _M:
    """``model`` with each field taken from ``given`` when named there, else
    from the row's column of the same name (a missing column is a
    ``KeyError``: the query and the model disagree)."""
    return model(**{k: row[k] for k in model.model_fields if k not in given}, **given)
