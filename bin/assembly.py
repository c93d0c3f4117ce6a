"""The roles' assembly: which packages make up each role, named in one place above them all.

STYLE.md, "Structure: floors that only look down": the ground (:mod:`wadud`)
knows no feature. Each feature offers an ``install(app)`` that adds its
routes and cleanup contexts, and checks the settings it owns; this module, on
the top floor with :mod:`bin.main`, lists them:

* :func:`features`: every package's ``install``, in the order they go on
  the app (what ``wadud api`` runs, and what tests build apps from);
* :func:`installers`: a role's list, :func:`features` and what only that role
  adds (``wadud serve`` embeds the TURN relay);
* :func:`build_app` / :func:`role_app`: :func:`wadud.app.build_app` with them;
* :func:`check_settings`: each feature's check of its own settings, run by
  ``bin.main`` as soon as they are loaded (the ``[turn]`` table is the relay's,
  :func:`turn.config.check_settings`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Literal

import turn.config
from wadud.config import Settings
from wadud.errors import ConfigError

if TYPE_CHECKING:
    from aiohttp import web

    from wadud.app import Installer

__all__ = ["Role", "build_app", "check_settings", "features", "installers", "role_app"]

Role = Literal["serve", "api"]

#: Each feature's check of the settings it owns; raises ConfigError.
_SETTINGS_CHECKS: tuple[Callable[[Settings], None], ...] = (turn.config.check_settings,)


def check_settings(settings: Settings) -> Settings:
    """Run every feature's check of its settings (raises ConfigError); return them."""
    for check in _SETTINGS_CHECKS:
        check(settings)
    return settings


def features() -> list[Installer]:
    """Every package's ``install``, in order."""
    # Imported here, not above: every command checks its settings with this
    # module, and only the roles that serve HTTP need the app's code.
    import booking.http
    import chat.http
    import sfu.http
    import signalling.http
    import signalling.pages
    import turn.http
    from wadud import accounts, ops

    return [
        ops.routes.install,
        accounts.routes.install,
        turn.http.install,
        booking.http.install,
        sfu.http.install,
        chat.http.install,
        signalling.http.install,
        signalling.pages.install,
    ]


def installers(role: Role) -> list[Installer]:
    """What a role's app is made of: :func:`features`, then what only that role adds."""
    import turn.http

    out = features()
    if role == "serve":
        # The relay in the same process, so a newcomer's calls cross NATs with no set-up.
        out.append(turn.http.install_embedded)
    return out


def build_app(settings: Settings, installers: Iterable[Installer] | None = None) -> web.Application:
    """The application with ``installers`` (default: :func:`features`)."""
    from wadud import app as ground

    return ground.build_app(settings, features() if installers is None else installers)


def role_app(role: Role, settings: Settings) -> web.Application:
    """The application of ``wadud serve`` or ``wadud api``; raises ConfigError when
    the settings cannot make that role work."""
    if role == "api" and not settings.secret_key:
        raise ConfigError("wadud api needs WADUD_SECRET_KEY: every replica must share it")
    if role == "api" and not settings.database_url:
        raise ConfigError("wadud api needs WADUD_DATABASE_URL (the embedded one is for serve)")
    if role == "serve":
        # A newcomer's first call: the demo page hands out a doctor's and a
        # patient's link. Only `serve` turns it on by itself.
        settings = dataclasses.replace(settings, call_demo=True)
    return build_app(settings, installers(role))
