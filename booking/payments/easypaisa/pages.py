"""Pages of our own that stand outside the app's shell: the postback bridge
that hands the patient on to EasyPaisa, and the simulator's pages."""

from __future__ import annotations

import html
import secrets
from typing import Final

from aiohttp import web

__all__ = ["bare_page", "hidden"]

_STYLE: Final = (
    "body{font:16px/1.5 system-ui,sans-serif;max-width:32rem;margin:2rem auto;"
    "padding:0 1rem;color:#1b1b1b}button{font:inherit;padding:.6rem 1.2rem;margin:.2rem}"
    ".primary{background:#0b6e4f;color:#fff;border:0;border-radius:.3rem}"
    ".sim{background:#fff3cd;padding:.3rem .6rem;border-radius:.3rem}"
)


def bare_page(title: str, body: str, *, nonce: str = "", form_to: str = "") -> web.Response:
    """A page of our own shell-less HTML (the postback bridge, the simulator).
    ``nonce``: the page's one script carries it."""
    style = secrets.token_urlsafe(12)
    policy = [
        "default-src 'none'",
        f"script-src 'nonce-{nonce}'" if nonce else "script-src 'none'",
        f"style-src 'nonce-{style}'",
        "base-uri 'none'",
        f"form-action 'self' {form_to}".strip(),
        "frame-ancestors 'none'",
    ]
    text = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title>"
        f'<style nonce="{style}">{_STYLE}</style>'
        f"</head><body>{body}</body></html>"
    )
    return web.Response(
        text=text,
        content_type="text/html",
        headers={
            "Content-Security-Policy": "; ".join(policy),
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
        },
    )


def hidden(fields: dict[str, str]) -> str:
    return "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
        for k, v in fields.items()
    )
