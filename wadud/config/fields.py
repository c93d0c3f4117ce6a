"""The field specifier of :class:`wadud.config.Settings` and its bases."""

from __future__ import annotations

import copy
import functools
from dataclasses import field
from typing import Any, TypeVar

__all__ = ["setting"]

T = TypeVar("T")


def setting(default: T, doc: str, *, env: bool = True) -> T:
    """A field of :class:`wadud.config.Settings` with its default and its documentation.

    A list or table default is copied for each instance. ``env=False`` marks a
    setting that only the TOML file can give (no ``WADUD_*`` variable).
    """
    metadata: dict[str, Any] = {"doc": doc} if env else {"doc": doc, "env": False}
    if isinstance(default, list | dict):
        return field(default_factory=functools.partial(copy.copy, default), metadata=metadata)
    return field(default=default, metadata=metadata)
