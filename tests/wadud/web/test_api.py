from __future__ import annotations

import datetime as dt
import json

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wadud.web.api import ApiModel


class Sample(ApiModel):
    at: dt.datetime
    count: int
    names: list[str] = []


def test_json_bodies_are_strict_but_take_iso_times() -> None:
    m = Sample.model_validate_json(b'{"at": "2026-03-29T01:30:00+00:00", "count": 2}', strict=True)
    assert m.at == dt.datetime(2026, 3, 29, 1, 30, tzinfo=dt.UTC)
    with pytest.raises(pydantic.ValidationError):
        Sample.model_validate_json(b'{"at": "2026-03-29T01:30:00Z", "count": "2"}', strict=True)
    with pytest.raises(pydantic.ValidationError):
        Sample.model_validate_json(b'{"at": "x", "count": 2, "extra": 1}', strict=True)


@given(st.text(), st.lists(st.text(), max_size=3))
def test_nul_is_refused_anywhere_in_text(text: str, names: list[str]) -> None:
    all_names = [*names, text]
    raw = json.dumps({"at": "2026-01-01T00:00:00+00:00", "count": 1, "names": all_names})
    if any("\x00" in n for n in all_names):
        with pytest.raises(pydantic.ValidationError):
            Sample.model_validate_json(raw, strict=True)
    else:
        assert Sample.model_validate_json(raw, strict=True).names == all_names


def test_documented_paths_drop_route_regexes() -> None:
    from aiohttp import web

    from wadud.web.api import ENDPOINTS, Routes, openapi

    routes = Routes("t")

    @routes.get("/x/{id:uuid}/m/{seq:\\d{1,18}}/{name}", auth="public")
    async def handler(call: object) -> None:
        """Doc."""

    app = web.Application()
    app[ENDPOINTS] = []
    routes.install(app)
    (ep,) = app[ENDPOINTS]
    assert ep.doc_path == "/x/{id}/m/{seq}/{name}"
    params = openapi([ep], title="t", version="1")["paths"][ep.doc_path]["get"]["parameters"]
    assert [(p["name"], p["schema"]) for p in params] == [
        ("id", {"type": "string", "format": "uuid"}),
        ("seq", {"type": "string", "pattern": "^\\d{1,18}$"}),
        ("name", {"type": "string"}),
    ]
