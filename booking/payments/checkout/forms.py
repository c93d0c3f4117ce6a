"""Posted forms, for the pages that play or bridge a gateway's checkout (the
sandbox's page, EasyPaisa's) and the landing gateways post back to: reading
one, and its OpenAPI request body."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from wadud.errors import BadRequest

__all__ = ["choice_body", "form_body", "read_choice", "read_form"]


async def read_form(request: web.Request) -> dict[str, str]:
    """A posted form's text fields (files ignored); a body that is not a
    readable form is a 400, never a 500."""
    try:
        form = await request.post()
    except (ValueError, LookupError, AssertionError) as exc:
        raise BadRequest(f"the body is not a readable form: {exc}") from None
    return {k: v for k, v in form.items() if isinstance(v, str)}


def form_body(**schema: Any) -> dict[str, Any]:
    """The OpenAPI request body of a posted form whose object schema has
    ``schema``'s keys (``required``, ``properties``) besides its type."""
    return {
        "content": {"application/x-www-form-urlencoded": {"schema": {"type": "object", **schema}}}
    }


def choice_body(yes: str, no: str) -> dict[str, Any]:
    """:func:`form_body` of a page with two buttons named ``action``."""
    return form_body(
        required=["action"], properties={"action": {"type": "string", "enum": [yes, no]}}
    )


async def read_choice(request: web.Request, yes: str, no: str) -> bool:
    """Which of a :func:`choice_body` form's two buttons was pressed (``yes``:
    true); anything else is a 400."""
    action = (await read_form(request)).get("action")
    if action not in (yes, no):
        raise BadRequest(f"action must be {yes} or {no}")
    return action == yes
