"""Short, readable test ids.

pytest makes a parametrized test's id from its values, so a test fed raw
packets or whole SDP bodies got an id of hundreds of kilobytes of escaped
bytes. The id is not only ugly: pytest puts it in the environment
(``PYTEST_CURRENT_TEST``), and a test whose id was 280 kB could not start
a process (``initdb``: "Argument list too long").

Here bytes become a few bytes of hex and their length, and long or
multi-line strings their two ends; a value pytest already names well keeps
its name. Any id still long or unprintable, an explicit ``ids=`` among
them, fails the collection, so one cannot creep back.

Loaded by tests/conftest.py.
"""

from __future__ import annotations

import zlib
from typing import Any

import pytest

#: The longest id a parametrized test may have (its part inside brackets).
LONGEST = 80
#: A string value up to this long stays as it is (with its whitespace folded).
SHORT = 40


def _text(value: str) -> str:
    folded = " ".join(value.split())
    if folded.isascii() and folded.isprintable() and len(folded) <= SHORT:
        return folded
    shown = folded.encode("ascii", "backslashreplace").decode()
    shown = "".join(c if c.isprintable() else "?" for c in shown)
    if len(shown) <= SHORT:
        return shown
    # Cases of one test often differ only at the end (an SDP's last line):
    # keep both ends, and a checksum so two long values never share an id.
    crc = zlib.crc32(value.encode("utf-8", "surrogatepass"))
    return f"{shown[:14]}...{shown[-18:]}~{crc:08x}"


def _bytes(value: bytes) -> str:
    if value.isascii() and value.decode().isprintable():
        return _text(value.decode())
    if len(value) <= 8:
        return value.hex() or "empty"
    return f"{value[:6].hex()}...{len(value)}B~{zlib.crc32(value):08x}"


def pytest_make_parametrize_id(config: pytest.Config, val: object, argname: str) -> str | None:
    if isinstance(val, bytes | bytearray | memoryview):
        return _bytes(bytes(val))
    if isinstance(val, str):
        return _text(val)
    return None


def _readable(test_id: str) -> bool:
    return len(test_id) <= LONGEST and test_id.isascii() and test_id.isprintable()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    bad: list[Any] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and not _readable(callspec.id):
            bad.append(f"{item.nodeid[:120]} ({len(callspec.id)} chars)")
    if bad:
        raise pytest.UsageError(
            f"test ids must be at most {LONGEST} printable ASCII characters; "
            "give these `ids=`:\n  " + "\n  ".join(bad)
        )
