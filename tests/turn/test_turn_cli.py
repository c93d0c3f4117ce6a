"""``wadud turn`` flags, config file mapping, and the process: metrics, SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest
from aiohttp import ClientSession

from bin.main import main
from rtc import stun
from tests.turn.conftest import SECRET, RawClient
from turn import cli
from turn.config import TurnConfig, check_settings
from turn.errors import TurnConfigError
from wadud.config import sources
from wadud.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def parse(*argv: str, base: TurnConfig | None = None) -> TurnConfig:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.config_from_args(parser.parse_args(list(argv)), base)


def test_flags_build_the_config() -> None:
    cfg = parse(
        "--listen", "0.0.0.0:3478", "--listen", "[::]:3479", "--relay-ip", "203.0.113.4",
        "--min-port", "50000", "--max-port", "50100", "--secret", "a", "--secret", "b",
        "--realm", "clinic", "--allow-peer", "10.0.0.0/8", "--user-quota", "3",
        "--total-quota", "9", "--max-bps", "1000000", "--external-ip", "198.51.100.1/203.0.113.4",
        "--user", "carol:pw",
        "--tls-listen", "0.0.0.0", "--tls-cert", "c.pem", "--tls-key", "k.pem",
    )  # fmt: skip
    assert cfg.listen_udp == (("0.0.0.0", 3478), ("::", 3479))
    assert cfg.listen_tcp == cfg.listen_udp
    assert cfg.listen_tls == (("0.0.0.0", 5349),)
    assert cfg.relay_ips == ("203.0.113.4",)
    assert (cfg.min_port, cfg.max_port) == (50000, 50100)
    assert cfg.secrets == ("a", "b")
    assert cfg.realm == "clinic"
    assert cfg.allow_peers == ("10.0.0.0/8",)
    assert (cfg.user_quota, cfg.total_quota, cfg.max_bps) == (3, 9, 1000000)
    assert cfg.external_ips == {"203.0.113.4": "198.51.100.1"}
    assert cfg.static_users == {"carol": "pw"}


def test_flags_lay_over_a_base_from_the_config_file() -> None:
    base = TurnConfig.from_mapping(
        {"listen_udp": ["127.0.0.1:3478"], "secrets": "filesecret", "realm": "fromfile"}
    )
    cfg = parse("--realm", "fromflag", base=base)
    assert cfg.realm == "fromflag"
    assert cfg.secrets == ("filesecret",)
    assert cfg.listen_udp == (("127.0.0.1", 3478),)
    with pytest.raises(TurnConfigError, match="unknown"):
        TurnConfig.from_mapping({"relm": "typo"})


@pytest.mark.parametrize(
    "argv",
    [
        ("--listen", "0.0.0.0:3478"),  # no secret
        ("--secret", "s", "--min-port", "9", "--max-port", "8"),
        ("--secret", "s", "--allow-peer", "nonsense"),
        ("--secret", "s", "--tls-listen", "0.0.0.0"),  # no cert
        ("--secret", "s", "--relay-ip", "0.0.0.0"),
    ],
)
def test_bad_settings_are_refused(argv: tuple[str, ...]) -> None:
    with pytest.raises(TurnConfigError):
        parse(*argv)


def test_wildcard_listen_needs_a_relay_ip() -> None:
    cfg = parse("--secret", "s")
    with pytest.raises(TurnConfigError, match="relay ip"):
        cfg.effective_relay_ips()
    assert parse("--secret", "s", "--listen", "127.0.0.1:1").effective_relay_ips() == ("127.0.0.1",)


def test_a_bad_turn_table_stops_every_command_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # wadud's [turn] table is shared with the relay: the ground reads it, the
    # relay checks its own keys, and bin.main runs that check for every command.
    f = tmp_path / "w.toml"
    f.write_text("[turn]\nsecrets = ['s']\nrelay_ips = ['203.0.113.5']\n")
    check_settings(sources.load(file=f, env={}))
    f.write_text("[turn]\nrelay_ipz = ['x']\n")
    with pytest.raises(ConfigError, match=r"\[turn\]: .*relay_ipz"):
        check_settings(sources.load(file=f, env={}))
    argv = ["token", "--config", str(f), "--room", "r", "--identity", "i", "--role", "doctor"]
    assert main(argv) == 2
    assert "relay_ipz" in capsys.readouterr().err


async def test_run_until_cancelled_closes_cleanly() -> None:
    cfg = TurnConfig(
        listen_udp=(("127.0.0.1", 0),), listen_tcp=(), secrets=(SECRET,), allow_peers=()
    )
    task = asyncio.create_task(cli.run(cfg))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_process_serves_metrics_and_stops_on_sigterm() -> None:
    port, metrics_port = _free_port(), _free_port()
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "wadud"), "turn",
        "--listen", f"127.0.0.1:{port}", "--secret", SECRET,
        "--metrics-listen", f"127.0.0.1:{metrics_port}",
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        client = await RawClient.open(("127.0.0.1", port))
        client.credentials()
        deadline = time.monotonic() + 15
        reply = None
        while reply is None and time.monotonic() < deadline:
            try:
                reply = await client.transact(
                    stun.StunMessage(stun.BINDING, stun.REQUEST, os.urandom(12)), 0.3
                )
            except TimeoutError:
                continue
        assert reply is not None
        assert (await client.allocate()).cls == stun.SUCCESS
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        async with ClientSession() as http, http.get(url) as resp:
            text = await resp.text()
        assert "turn_allocations 1.0" in text
        assert "turn_auth_failures_total" in text
        assert 'turn_relayed_packets_total{direction="to_peer"}' in text
        client.close()
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 10)
        assert proc.returncode == 0, out.decode()
        assert b"allocation deleted" in out
        assert b"turn relay stopped" in out
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
