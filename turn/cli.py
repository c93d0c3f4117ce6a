"""``wadud turn``: command-line flags and the long-running relay.

``add_arguments`` adds the flags to the caller's parser, ``config_from_args``
lays the given flags over a base :class:`TurnConfig` (from the config file or
the defaults), and ``run`` serves until cancelled or SIGTERM/SIGINT, then shuts
down gracefully: listeners close first, then every allocation is deleted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from turn.config import TurnConfig, parse_hostport

logger = logging.getLogger("wadud.turn.cli")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``wadud turn`` flags; every one defaults to None so the config file wins when absent."""
    g = parser.add_argument_group("TURN relay")
    add = g.add_argument
    add(
        "--listen",
        action="append",
        metavar="ADDR:PORT",
        help="UDP and TCP listen address (repeatable; default 0.0.0.0:3478)",
    )
    add("--listen-udp", action="append", metavar="ADDR:PORT", help="UDP-only listen address")
    add("--listen-tcp", action="append", metavar="ADDR:PORT", help="TCP-only listen address")
    add(
        "--tls-listen",
        action="append",
        metavar="ADDR:PORT",
        help="TLS (turns:) listen address, default port 5349; needs --tls-cert/--tls-key",
    )
    add("--tls-cert", metavar="FILE", help="PEM certificate chain for TLS")
    add("--tls-key", metavar="FILE", help="PEM private key for TLS")
    add(
        "--relay-ip",
        action="append",
        metavar="ADDR",
        help="IP relay sockets bind to (one per family; default: the listen address)",
    )
    add(
        "--external-ip",
        action="append",
        metavar="PUBLIC/RELAY",
        help="advertise PUBLIC for relay ip RELAY (1:1 NAT), like coturn's -X",
    )
    add("--min-port", type=int, help="lowest relay port (default 49152)")
    add("--max-port", type=int, help="highest relay port (default 65535)")
    add("--realm", help="authentication realm (default wadud)")
    add(
        "--secret",
        action="append",
        metavar="S",
        help="REST shared secret (repeatable: the first signs, all verify)",
    )
    add("--user", action="append", metavar="NAME:PASSWORD", help="static long-term user")
    add(
        "--allow-peer",
        action="append",
        metavar="CIDR",
        help="allow relaying to peers in CIDR despite the default deny list",
    )
    add("--deny-peer", action="append", metavar="CIDR", help="also refuse peers in CIDR")
    add("--user-quota", type=int, help="allocations per user (default 10)")
    add(
        "--anonymous-quota",
        type=int,
        help="allocations per anonymous patient session, users anon-* (default 2)",
    )
    add("--total-quota", type=int, help="allocations in total (default 10000)")
    add("--max-bps", type=int, help="bits/s per allocation, both ways; 0 = unlimited")
    add("--max-permissions", type=int, help="permissions per allocation (default 64)")
    add("--max-lifetime", type=int, help="maximum allocation lifetime, s (default 3600)")
    add(
        "--unauth-rate",
        type=float,
        help="unauthenticated requests/s per source IP (default 100; 0 = off)",
    )
    add("--software", help="SOFTWARE attribute; empty to omit")
    add("--metrics-listen", metavar="ADDR:PORT", help="serve Prometheus /metrics here")


def config_from_args(args: argparse.Namespace, base: TurnConfig | None = None) -> TurnConfig:
    """``base`` (or the defaults) with every flag that was given laid over it."""
    cfg = base or TurnConfig()
    changes: dict[str, Any] = {}
    v = vars(args)

    def addrs(key: str, port: int) -> tuple[tuple[str, int], ...] | None:
        values = v.get(key)
        return tuple(parse_hostport(x, port) for x in values) if values else None

    both = addrs("listen", 3478)
    if both is not None:
        changes["listen_udp"] = both
        changes["listen_tcp"] = both
    udp = addrs("listen_udp", 3478)
    tcp = addrs("listen_tcp", 3478)
    if udp is not None:
        changes["listen_udp"] = (*(both or ()), *udp) if both else udp
        if both is None and tcp is None:
            changes["listen_tcp"] = ()
    if tcp is not None:
        changes["listen_tcp"] = (*(both or ()), *tcp) if both else tcp
        if both is None and udp is None:
            changes["listen_udp"] = ()
    tls = addrs("tls_listen", 5349)
    if tls is not None:
        changes["listen_tls"] = tls
    for flag, field in (
        ("tls_cert", "tls_cert"),
        ("tls_key", "tls_key"),
        ("min_port", "min_port"),
        ("max_port", "max_port"),
        ("realm", "realm"),
        ("user_quota", "user_quota"),
        ("anonymous_quota", "anonymous_quota"),
        ("total_quota", "total_quota"),
        ("max_bps", "max_bps"),
        ("max_permissions", "max_permissions"),
        ("max_lifetime", "max_lifetime"),
        ("unauth_rate", "unauth_rate"),
        ("software", "software"),
    ):
        if v.get(flag) is not None:
            changes[field] = v[flag]
    if v.get("unauth_rate") is not None:
        changes["unauth_burst"] = max(1.0, 2 * float(v["unauth_rate"]))
    for flag, field in (
        ("relay_ip", "relay_ips"),
        ("secret", "secrets"),
        ("allow_peer", "allow_peers"),
        ("deny_peer", "deny_peers"),
    ):
        if v.get(flag):
            changes[field] = tuple(v[flag])
    if v.get("external_ip"):
        mapping = {}
        for item in v["external_ip"]:
            public, _, private = item.partition("/")
            mapping[private or public] = public
        changes["external_ips"] = MappingProxyType(mapping)
    if v.get("user"):
        users = dict(cfg.static_users)
        for item in v["user"]:
            name, sep, password = item.partition(":")
            if not sep:
                raise argparse.ArgumentTypeError(f"--user wants NAME:PASSWORD, got {item!r}")
            users[name] = password
        changes["static_users"] = MappingProxyType(users)
    if v.get("metrics_listen"):
        changes["metrics_listen"] = parse_hostport(v["metrics_listen"], 9641)
    return replace(cfg, **changes).validate()


async def run(config: TurnConfig) -> None:
    """Serve until cancelled, SIGTERM or SIGINT; then close gracefully."""
    from turn.aio import TurnServer

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread, or no signals on this platform
    server = TurnServer(config)
    runner = None
    try:
        # Metrics first: once the relay answers, everything it does is
        # already observable.
        if config.metrics_listen is not None:
            runner = await _serve_metrics(config.metrics_listen)
        await server.start()
        await stop.wait()
        logger.info("turn relay stopping on signal")
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        if runner is not None:
            await runner.cleanup()
        await server.close()


async def _serve_metrics(addr: tuple[str, int]) -> Any:
    """A tiny aiohttp app with /metrics, for running the relay on its own."""
    from aiohttp import web
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, addr[0], addr[1])
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def main(argv: list[str] | None = None) -> None:
    """Stand-alone entry point (``python -m turn.cli``) until ``wadud turn`` is wired."""
    import uvloop

    parser = argparse.ArgumentParser(prog="wadud turn", description="Wadud TURN relay")
    add_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO)
    config = config_from_args(args)
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(run(config))


if __name__ == "__main__":
    main()
