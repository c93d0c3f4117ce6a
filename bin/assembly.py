"""The roles' assembly: which packages make up each role, named in one place above them all.

STYLE.md, "Structure: floors that only look down": the ground (:mod:`wadud`)
knows no feature. Each feature offers an ``install(app)`` that adds its
routes and cleanup contexts, and checks the settings it owns; this module, on
the top floor with :mod:`bin.main`, lists them:

* :func:`features`: every package's ``install``, in the order they go on
  the app (what ``wadud api`` runs: its calls' media is on ``wadud media``
  nodes, reached over Redis);
* :func:`in_process`: :func:`features` with a media worker in the same
  process (what tests build apps from);
* :func:`installers`: a role's list (``wadud serve`` is :func:`in_process`
  and embeds the TURN relay too);
* :func:`build_app` / :func:`role_app`: :func:`wadud.web.app.build_app` with them;
* :func:`check_settings`: each feature's check of its own settings, run by
  ``bin.main`` as soon as they are loaded (the ``[turn]`` table is the relay's,
  :func:`turn.config.check_settings`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Literal

import privacy.consent
import turn.config
from wadud.config import Settings
from wadud.errors import ConfigError

if TYPE_CHECKING:
    from aiohttp import web

    import privacy.retention
    from wadud.web.app import Installer

__all__ = [
    "Role",
    "build_app",
    "check_settings",
    "features",
    "in_process",
    "installers",
    "role_app",
]

Role = Literal["serve", "api"]


def _notify_settings(settings: Settings) -> None:
    # Imported when called: the senders' libraries are the notifier's business.
    from notify.channels import check_settings as notify_check

    notify_check(settings)


#: Each feature's check of the settings it owns; raises ConfigError.
_SETTINGS_CHECKS: tuple[Callable[[Settings], None], ...] = (
    turn.config.check_settings,
    _notify_settings,
    privacy.consent.check_settings,
)


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
    import booking.payments.http
    import chat.http
    import hooks.http
    import notify.http
    import privacy.http
    import recording.http
    import signalling.edge.http
    import signalling.edge.pages
    import signalling.media.nodes
    import turn.http
    from wadud.web import accounts, ops

    return [
        ops.install,
        accounts.routes.install,
        privacy.http.install,
        turn.http.install,
        booking.http.install,
        booking.payments.http.install,
        chat.http.install,
        notify.http.install,
        hooks.http.install,
        recording.http.install,
        data_rights,
        signalling.edge.http.install,
        signalling.edge.pages.install,
        signalling.media.nodes.install,
    ]


def data_rights(app: web.Application) -> None:
    """Export, erasure and retention (privacy/): the features' providers and
    rules, registered on privacy's endpoints and schedule, since privacy/
    stands below the features and imports none of them."""
    import booking.call_reports.privacy
    import booking.payments.payouts.privacy
    import booking.payments.transfers.privacy
    import booking.privacy
    import chat.privacy
    import notify.privacy
    import privacy.retention
    import privacy.rights
    import privacy.rights_http
    import recording.http
    import recording.privacy

    # In this order: notify finds jobs by the conversations chat then deletes.
    privacy.rights.register(app, booking.privacy.BookingProvider())
    privacy.rights.register(app, booking.call_reports.privacy.CallReportProvider())
    privacy.rights.register(app, booking.payments.transfers.privacy.BankTransferProvider(app))
    privacy.rights.register(app, booking.payments.payouts.privacy.DoctorProvider(app))
    privacy.rights.register(app, notify.privacy.NotifyProvider())
    privacy.rights.register(app, chat.privacy.ChatProvider(app))
    # Before the account's own part: erasure shreds the patient's key after
    # every provider ran, so recordings are deleted while their rows exist.
    privacy.rights.register(app, recording.privacy.RecordingProvider(recording.http.AppParts(app)))
    privacy.retention.register(app, retention_rules())
    privacy.rights_http.install(app)
    privacy.retention.install(app)


def retention_rules() -> list[privacy.retention.Rule]:
    """Every feature's retention rules (``wadud retention run`` adds the
    ground's own, :func:`privacy.retention.core_rules`)."""
    import booking.call_reports.privacy
    import booking.privacy
    import chat.privacy
    import notify.privacy
    import recording.privacy

    return [
        *booking.privacy.retention_rules(),
        *booking.call_reports.privacy.retention_rules(),
        *chat.privacy.retention_rules(),
        *notify.privacy.retention_rules(),
        *recording.privacy.retention_rules(),
    ]


def in_process() -> list[Installer]:
    """:func:`features` with a media worker in this process, installed before
    signalling so that calls use it instead of media nodes."""
    import sfu.node.http

    out = features()
    out.insert(out.index(_signalling_install()), sfu.node.http.install)
    return out


def _signalling_install() -> Installer:
    import signalling.edge.http

    return signalling.edge.http.install


def installers(role: Role) -> list[Installer]:
    """What a role's app is made of: :func:`features`, then what only that role adds."""
    import turn.http

    if role == "api":
        # The webhook deliverer too: replicas share its work (SKIP LOCKED), so
        # an api deployment needs no other process for it (webhooks_deliver).
        import hooks.http

        return [*features(), hooks.http.install_worker]
    import notify.http

    out = in_process()
    # The relay in the same process, so a newcomer's calls cross NATs with no set-up.
    out.append(turn.http.install_embedded)
    # And the notifier (unless notify_in_serve is off): `wadud api` deployments
    # run `wadud notify` beside their replicas instead.
    out.append(notify.http.install_worker)
    # And the webhook deliverer (unless webhooks_deliver is off), as in `wadud api`.
    import hooks.http

    out.append(hooks.http.install_worker)
    # And the recorder (unless recording_in_serve is off): `wadud api`
    # deployments run `wadud recorder` replicas beside theirs.
    import recording.http

    out.append(recording.http.install_worker)
    # And the phone bridge, where [sip] is configured: `wadud api`
    # deployments run `wadud sip` beside their replicas instead.
    import sip.role

    out.append(sip.role.install_worker)
    return out


def build_app(settings: Settings, installers: Iterable[Installer] | None = None) -> web.Application:
    """The application with ``installers`` (default: :func:`in_process`)."""
    from wadud.web import app as ground

    return ground.build_app(settings, in_process() if installers is None else installers)


def role_app(role: Role, settings: Settings) -> web.Application:
    """The application of ``wadud serve`` or ``wadud api``; raises ConfigError when
    the settings cannot make that role work."""
    if role == "api" and not settings.secret_key:
        raise ConfigError("wadud api needs WADUD_SECRET_KEY: every replica must share it")
    if role == "api" and not settings.database_url:
        raise ConfigError("wadud api needs WADUD_DATABASE_URL (the embedded one is for serve)")
    if role == "api" and not settings.redis_url:
        raise ConfigError(
            "wadud api needs WADUD_REDIS_URL: replicas share call rooms and reach"
            " media nodes through it"
        )
    if role == "serve":
        # A newcomer's first call: the demo page hands out a doctor's and a
        # patient's link. Only `serve` turns it on by itself.
        settings = dataclasses.replace(settings, call_demo=True)
    return build_app(settings, installers(role))
