"""The ``wadud`` command: one codebase, roles chosen at start.

wadud serve     everything in one process, embedded defaults
wadud api       HTTP only (REST, WebSockets, web client); stateless replicas
wadud media     a media node: one worker process per core, registered in Redis
wadud migrate   apply database migrations and exit
wadud audit verify  walk the audit trail's hash chain; exit 1 naming the first bad row
wadud notify    send notifications (email, push, SMS, WhatsApp); any number of replicas
wadud hooks     deliver clinics' signed room webhooks; any number of replicas
wadud recorder  make stopped visit recordings into WebM files; any number of replicas
wadud sip       the phone bridge: SIP trunks' callers into visits by PIN (docs/phone.md)
wadud user add  create an account (how the first admin comes to be)
wadud retention run [--dry-run]  delete data past its retention period
wadud token     print a call link (room token) for one participant
wadud key create|list|revoke  API keys for clinics' servers and load testers
wadud load      load-test a deployment by its URL (not a server role; wadud_client.load)
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import logging
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import uvloop

from turn.errors import TurnConfigError
from wadud import config
from wadud.config import sources
from wadud.errors import ConfigError, WadudError
from wadud.observe import logs

log = logging.getLogger("wadud.main")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML configuration file (also $WADUD_CONFIG)")
    p.add_argument("--data-dir", dest="data_dir", help="folder for local state (default ./var)")


def _http(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (default 8080)")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="wadud", description=__doc__.split("\n\n")[0])
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run everything in one process (embedded defaults)")
    _common(p)
    _http(p)
    p = sub.add_parser("api", help="run the HTTP API role only")
    _common(p)
    _http(p)
    p.add_argument("--region", help="region of this replica (rooms are placed there by default)")
    p = sub.add_parser("media", help="run a media node: one worker process per core")
    _common(p)
    p.add_argument("--region", help="region the node's workers register under")
    p.add_argument("--workers", type=int, help="worker processes (default: one per core)")
    p.add_argument("--http", help="ADDR:PORT for /healthz, /readyz and /metrics")
    p.add_argument(
        "--udp-port", dest="udp_port", type=int, help="UDP port of worker 0; worker i takes +i"
    )
    p.add_argument(
        "--announce", help="address(es) peers reach the workers at, comma separated (NAT, cloud)"
    )
    p.add_argument("--node-id", dest="node_id", help="name of the node in the registry")
    p = sub.add_parser("migrate", help="apply database migrations and exit")
    _common(p)
    p = sub.add_parser("audit", help="the audit trail (docs/privacy.md)")
    audit_sub = p.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    verify = audit_sub.add_parser(
        "verify", help="recompute the hash chain; exit 0 with the count, 1 naming the first bad row"
    )
    _common(verify)
    p = sub.add_parser("notify", help="send notifications and reminders (docs/notifications.md)")
    _common(p)
    p = sub.add_parser("hooks", help="deliver clinics' room webhooks (docs/webhooks.md)")
    _common(p)
    p = sub.add_parser("recorder", help="make visit recordings into files (docs/recording.md)")
    _common(p)
    p = sub.add_parser("sip", help="run the phone bridge: callers into visits (docs/phone.md)")
    _common(p)
    p = sub.add_parser("turn", help="run the TURN/STUN relay (RFC 8656)")
    p.add_argument("--config", help="TOML configuration file (also $WADUD_CONFIG)")
    from turn.cli import add_arguments

    add_arguments(p)

    p = sub.add_parser(
        "easypaisa-sim",
        help="run a stand-in for EasyPaisa's servers (development, benchmarks; docs/api.md)",
    )
    p.add_argument("--config", help="TOML configuration file (also $WADUD_CONFIG)")
    _http(p)
    p.add_argument(
        "--merchant",
        required=True,
        help="the Wadud it serves (its base URL); its IPN handler is called there",
    )

    p = sub.add_parser("token", help="print a join link for a call room")
    _common(p)
    p.add_argument("--room", required=True, help="room name")
    p.add_argument("--identity", required=True, help="who joins: a stable id for the person")
    p.add_argument(
        "--role",
        required=True,
        choices=["doctor", "patient", "staff"],
        help="doctors and staff get the admin right (admit, mute, remove, end)",
    )
    p.add_argument(
        "--name",
        default="",
        help="display name (default: none; the page asks the person for one, never shows an id)",
    )
    p.add_argument(
        "--region", default="", help="media region for this participant (default: the replica's)"
    )
    p.add_argument(
        "--home",
        default="",
        help="the region whose own control plane holds the room (every participant is"
        ' there; docs/operations.md, "A region cut off"); default: the global plane',
    )
    p.add_argument(
        "--url",
        help="the server's address for the link, e.g. http://127.0.0.1:18080 (default:"
        " public_url, else the address `wadud serve` last announced from this data folder)",
    )
    p.add_argument(
        "--ttl", type=int, default=4 * 3600, help="seconds the link is valid (default 4 hours)"
    )

    p = sub.add_parser("key", help="API keys that mint room tokens from outside (docs/api.md)")
    key_sub = p.add_subparsers(dest="key_command", required=True, metavar="ACTION")
    create = key_sub.add_parser(
        "create", help="make a key and secret; the secret is printed once and never again"
    )
    _common(create)
    create.add_argument("--name", required=True, help="what the key is for, e.g. 'load tests'")
    create.add_argument(
        "--scope",
        required=True,
        choices=["load", "clinic"],
        help="load: rooms named load-... only, for wadud load; clinic: that clinic's rooms",
    )
    create.add_argument("--clinic-id", dest="clinic_id", help="the clinic of a clinic key")
    listing = key_sub.add_parser("list", help="every key: id, scope, clinic, name, last use")
    _common(listing)
    revoke = key_sub.add_parser("revoke", help="revoke a key: its next request is refused")
    _common(revoke)
    revoke.add_argument("key_id", help="the key's id (wk_...)")

    sub.add_parser(
        "load", help="load-test a deployment by its URL (wadud load --help)", add_help=False
    )

    p = sub.add_parser("retention", help="delete data past its retention period")
    ret_sub = p.add_subparsers(dest="retention_command", required=True, metavar="ACTION")
    ret = ret_sub.add_parser("run", help="run one retention round now (docs/privacy.md)")
    _common(ret)
    ret.add_argument(
        "--dry-run",
        dest="dry_run",
        action="store_true",
        help="count what each rule would delete; delete nothing",
    )

    p = sub.add_parser("user", help="manage accounts")
    user_sub = p.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    add = user_sub.add_parser("add", help="create an account")
    _common(add)
    add.add_argument("--email", required=True)
    add.add_argument(
        "--role", required=True, choices=["admin", "clinic_staff", "doctor", "patient"]
    )
    add.add_argument("--clinic-id", dest="clinic_id")
    add.add_argument("--name", default="")
    add.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password (one line) from standard input; without it, the"
        " command asks for it on the terminal",
    )
    return top


def load_settings(args: argparse.Namespace) -> config.Settings:
    overrides: dict[str, Any] = {
        name: getattr(args, name, None) for name in ("host", "port", "data_dir")
    }
    if args.command in ("api", "media"):
        overrides["region"] = getattr(args, "region", None)
    if args.command == "media":
        overrides.update(
            media_workers=args.workers,
            media_http=args.http,
            media_port=args.udp_port,
            media_announced_addresses=args.announce,
            media_node_id=args.node_id,
        )
    settings = sources.load(file=getattr(args, "config", None), overrides=overrides)
    if settings.metrics_listen and args.command in ("serve", "api"):
        from wadud.web.ops import listen_address

        listen_address(settings.metrics_listen)  # a typo fails at start, not at first scrape
    from bin import assembly

    return assembly.check_settings(settings)


def _run(coro: Any) -> Any:
    return uvloop.run(coro)


def cmd_serve(settings: config.Settings, *, role: str) -> int:

    from bin import assembly
    from wadud.state import keys
    from wadud.web import serving

    app = assembly.role_app("serve" if role == "serve" else "api", settings)
    settings = app[keys.SETTINGS]

    def announce() -> None:
        print(f"Wadud is serving on {settings.base_url}/  (Ctrl+C to stop)", flush=True)
        # So `wadud token` on the same data folder prints links to this address.
        with contextlib.suppress(OSError):
            served_url_file(settings).write_text(settings.base_url + "\n")
        if settings.call_demo:
            print(
                f"Open {settings.base_url}/demo for a test call between two browser tabs",
                flush=True,
            )
        if settings.metrics_listen:
            print(f"Prometheus metrics: http://{settings.metrics_listen}/metrics", flush=True)

    code = serving.run(app, settings.host, settings.port, announce, settings.shutdown_timeout)
    # Not a return: the interpreter's teardown would outlast the stop's bound.
    serving.exit_now(code)
    return code


def cmd_turn(args: argparse.Namespace, settings: config.Settings) -> int:
    from turn.cli import config_from_args, run
    from turn.config import TurnConfig

    base = dict(settings.turn_relay)
    if settings.turn_secrets:
        base["secrets"] = settings.turn_secrets
    if settings.turn_tls_cert:
        base["tls_cert"], base["tls_key"] = settings.turn_tls_cert, settings.turn_tls_key
    turn_config = config_from_args(args, TurnConfig.from_mapping(base))
    with contextlib.suppress(KeyboardInterrupt):
        _run(run(turn_config))
    return 0


def cmd_easypaisa_sim(args: argparse.Namespace, settings: config.Settings) -> int:
    """A stand-in for EasyPaisa on its own port, for the store the
    ``payments_easypaisa_*`` settings name (the merchant's own; its
    ``payments_easypaisa_endpoint`` is this simulator's ``/easypaisa-sim``)."""

    from booking.payments.easypaisa.http_simulator import simulator_app
    from booking.payments.gateways import easypaisa
    from wadud.web import serving

    if not settings.payments_easypaisa_store_id:
        print(
            "wadud: easypaisa-sim needs the store it stands in for:"
            " payments_easypaisa_store_id, _hash_key, _username and _password",
            file=sys.stderr,
        )
        return 2
    store = easypaisa.from_config(settings)
    assert store is not None
    host, port = args.host or "127.0.0.1", args.port or 8090
    merchant = args.merchant.rstrip("/") + easypaisa.IPN_HANDLER_PATH
    app = simulator_app(store, f"http://{host}:{port}", merchant)
    return serving.run(
        app,
        host,
        port,
        lambda: print(f"EasyPaisa simulator on http://{host}:{port}", flush=True),
        shutdown_timeout=60.0,
    )


def cmd_media(settings: config.Settings) -> int:
    from sfu.node import supervisor
    from sfu.node.settings import http_address

    if not settings.redis_url:
        raise ConfigError(
            "wadud media needs WADUD_REDIS_URL: workers register and take requests there"
        )
    if settings.media_workers < 0:
        raise ConfigError("--workers must be 0 (one per core) or more")
    if settings.media_start_retries < 1:
        raise ConfigError("media_start_retries must be 1 or more")
    if not 0 <= settings.media_restart_backoff <= settings.media_restart_backoff_max:
        raise ConfigError("media_restart_backoff must be between 0 and media_restart_backoff_max")
    try:
        http_address(settings.media_http)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    from wadud.web import serving

    code = 0
    with contextlib.suppress(KeyboardInterrupt):
        code = supervisor.run(settings)
    # Not a return: the interpreter's teardown would outlast the stop's bound.
    serving.exit_now(code)
    return code


def cmd_migrate(settings: config.Settings) -> int:
    from wadud.state import db, migrate

    async def go() -> list[str]:
        async with db.connection(settings) as conn:
            return await migrate.migrate(conn)

    applied = _run(go())
    print("applied: " + ", ".join(applied) if applied else "nothing to apply; schema is current")
    return 0


def _until_interrupted(role: Coroutine[Any, Any, int]) -> int:
    """Run a worker role; Ctrl-C in a terminal is a clean stop, not a traceback."""
    with contextlib.suppress(KeyboardInterrupt):
        return int(_run(role))
    return 0


def cmd_notify(settings: config.Settings) -> int:
    from notify.service import run

    return _until_interrupted(run(settings))


def cmd_hooks(settings: config.Settings) -> int:
    from hooks.service import run

    return _until_interrupted(run(settings))


def cmd_recorder(settings: config.Settings) -> int:
    from recording.recorder import run

    return _until_interrupted(run(settings))


def cmd_sip(settings: config.Settings) -> int:
    from sip.role import run

    return _until_interrupted(run(settings))


def cmd_audit_verify(settings: config.Settings) -> int:
    """Exit 0 and print the count and head when the chain verifies; 1 and
    the first altered, inserted or missing row when it does not."""
    import asyncpg

    from privacy import audit
    from wadud.state import db

    async def go() -> audit.AuditVerification:
        async with db.connection(settings) as conn:
            try:
                return await audit.verify(conn)
            except asyncpg.UndefinedTableError:
                raise ConfigError("this database has no audit trail; run `wadud migrate`") from None

    try:
        verdict = _run(go())
    except (OSError, asyncpg.PostgresError) as exc:
        # Exit 2, not 1: the chain was not checked, so nothing is known about it.
        raise ConfigError(f"could not read the audit trail: {exc}") from None
    if verdict.ok:
        print(
            f"audit chain intact: {verdict.count} rows"
            f" (head: row {verdict.head_seq}, hash {verdict.head_hash})"
        )
        return 0
    print(
        f"audit chain broken at row {verdict.bad_seq}: {verdict.problem}"
        f" ({verdict.count} rows before it verify)"
    )
    return 1


def read_password(from_stdin: bool) -> str:
    """The new account's password: one line of standard input, or typed at
    a prompt on the terminal (never echoed); with neither, say how."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    if not sys.stdin.isatty():
        raise ConfigError(
            "no terminal to ask for the password: send it on standard input with"
            " --password-stdin (e.g. `wadud user add ... --password-stdin < file`)"
        )
    try:
        return getpass.getpass("password: ")
    except EOFError:
        raise ConfigError("no password was typed") from None


def cmd_user_add(args: argparse.Namespace, settings: config.Settings) -> int:
    from uuid import UUID

    from wadud.state import db, migrate
    from wadud.web import accounts, auth
    from wadud.web.api import Role

    password = read_password(args.password_stdin)
    if len(password) < 8:
        raise ConfigError("the password needs at least 8 characters")

    async def go() -> accounts.User:
        async with db.connection(settings) as conn:
            await migrate.migrate(conn)
            return await accounts.create_user(
                conn,
                email=args.email,
                password=password,
                role=Role(args.role),
                clinic_id=UUID(args.clinic_id) if args.clinic_id else None,
                display_name=args.name,
                passwords=auth.passwords_for(settings),
            )

    user = _run(go())
    print(f"created {user.role.value} {user.email} ({user.id})")
    return 0


def cmd_retention_run(args: argparse.Namespace, settings: config.Settings) -> int:
    from bin import assembly
    from privacy import retention
    from wadud.state import db, migrate, storage

    rules = [*retention.core_rules(), *assembly.retention_rules()]

    async def go() -> list[retention.Outcome]:
        async with contextlib.AsyncExitStack() as stack:
            store = storage.create(settings)
            stack.push_async_callback(store.close)
            conn = await stack.enter_async_context(db.connection(settings))
            await migrate.migrate(conn)
            done = await retention.run(conn, rules, settings, storage=store, dry_run=args.dry_run)
            assert done is not None
            return done

    outcomes = _run(go())
    verb = "would delete" if args.dry_run else "deleted"
    for o in outcomes:
        kept = f"{o.days:g} days" if o.days > 0 else "kept (0: until erased)"
        print(f"{o.rule:<16} {kept:<24} {verb} {o.rows:>8}  {o.data_class}")
    return 0


def cmd_key(args: argparse.Namespace, settings: config.Settings) -> int:
    from uuid import UUID

    from wadud.state import db, migrate
    from wadud.web import api_keys

    async def go() -> int:
        async with db.connection(settings) as conn:
            await migrate.migrate(conn)
            if args.key_command == "create":
                try:
                    clinic = UUID(args.clinic_id) if args.clinic_id else None
                except ValueError:
                    raise ConfigError("--clinic-id is a clinic's id (a UUID)") from None
                made = await api_keys.create_key(
                    conn, name=args.name, scope=api_keys.Scope(args.scope), clinic_id=clinic
                )
                print(f"WADUD_API_KEY={made.key.id}")
                print(f"WADUD_API_SECRET={made.secret}")
                print("the secret is shown only now; keep it with the key", file=sys.stderr)
            elif args.key_command == "list":
                print(f"{'KEY':<20} {'SCOPE':<7} {'CLINIC':<36} {'LAST USED':<20} NAME")
                for k in await api_keys.list_keys(conn):
                    used = k.last_used_at.strftime("%Y-%m-%d %H:%M") if k.last_used_at else "never"
                    if k.revoked_at is not None:
                        used = "revoked " + k.revoked_at.strftime("%Y-%m-%d")
                    clinic_id = str(k.clinic_id or "-")
                    print(f"{k.id:<20} {k.scope.value:<7} {clinic_id:<36} {used:<20} {k.name}")
            else:
                key = await api_keys.revoke_key(conn, args.key_id)
                print(f"revoked {key.id} ({key.name})")
        return 0

    result: int = _run(go())
    return result


#: Room and identity names: what fits in a URL path and a log line unharmed.
_NAME_MAX = 128


def served_url_file(settings: config.Settings) -> Path:
    """Where `wadud serve` notes the address it serves on, for `wadud token`."""
    return Path(settings.data_dir) / "served-url"


def link_base(url: str | None, settings: config.Settings) -> str:
    """The origin a printed join link points at: ``--url``, else the
    configured public URL, else what `wadud serve` on this data folder
    announced, else the default address."""
    if url:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
            raise ConfigError("--url must be an http or https address, e.g. http://127.0.0.1:18080")
        return url.rstrip("/")
    if settings.public_url:
        return settings.base_url
    with contextlib.suppress(OSError):
        served = served_url_file(settings).read_text().strip()
        if served:
            return served
    return settings.base_url


def join_link(
    settings: config.Settings,
    room: str,
    identity: str,
    role: str,
    *,
    name: str = "",
    region: str = "",
    home: str = "",
    ttl: float = 3600,
    url: str | None = None,
) -> str:
    """A join link for ``room`` whose token the servers of ``settings``
    accept (what `wadud token` prints); ConfigError for a bad argument."""
    import datetime as dt
    from urllib.parse import quote

    from wadud.web.auth import RoomGrant, issue_room_token

    for what, value in (("--room", room), ("--identity", identity)):
        if not value or len(value) > _NAME_MAX or not value.isprintable():
            raise ConfigError(f"{what} must be 1 to {_NAME_MAX} printable characters")
    if ttl <= 0:
        raise ConfigError("--ttl must be a positive number of seconds")
    # The secret that `wadud serve` verifies with: configured, or kept under
    # the data folder (created here first if serve has not run yet).
    settings = settings.with_secret()
    grant = RoomGrant(
        room=room,
        identity=identity,
        name=name,
        role=role,
        publish=True,
        subscribe=True,
        admin=role in ("doctor", "staff"),
        region=region,
        home=home,
    )
    now = dt.datetime.now(dt.UTC)
    token = issue_room_token(
        settings,
        grant,
        # A minute back, so a server whose clock is a little behind accepts it.
        not_before=now - dt.timedelta(seconds=60),
        expires=now + dt.timedelta(seconds=ttl),
    )
    return f"{link_base(url, settings)}/call/{quote(room, safe='')}?token={token}"


def cmd_token(args: argparse.Namespace, settings: config.Settings) -> int:
    print(
        join_link(
            settings,
            args.room,
            args.identity,
            args.role,
            name=args.name,
            region=args.region,
            home=args.home,
            ttl=args.ttl,
            url=args.url,
        )
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["load"]:
        # Not a server role: the load tester reads no server configuration.
        from wadud_client.load.cli import main as load

        return load(argv[1:])
    args = parser().parse_args(argv)
    try:
        settings = load_settings(args)
        logs.configure(settings.log_level, settings.log_format)
        if args.command in ("serve", "api"):
            return cmd_serve(settings, role=args.command)
        if args.command == "media":
            return cmd_media(settings)
        if args.command == "turn":
            return cmd_turn(args, settings)
        if args.command == "token":
            return cmd_token(args, settings)
        if args.command == "easypaisa-sim":
            return cmd_easypaisa_sim(args, settings)
        if args.command == "migrate":
            return cmd_migrate(settings)
        if args.command == "notify":
            return cmd_notify(settings)
        if args.command == "hooks":
            return cmd_hooks(settings)
        if args.command == "recorder":
            return cmd_recorder(settings)
        if args.command == "sip":
            return cmd_sip(settings)
        if args.command == "retention" and args.retention_command == "run":
            return cmd_retention_run(args, settings)
        if args.command == "audit" and args.audit_command == "verify":
            return cmd_audit_verify(settings)
        if args.command == "key":
            return cmd_key(args, settings)
        if args.command == "user" and args.user_command == "add":
            return cmd_user_add(args, settings)
    except (WadudError, TurnConfigError) as exc:
        print(f"wadud: {getattr(exc, 'detail', None) or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
