"""TURN over TLS (``turns:``) from ``wadud serve``'s embedded relay: the
self-signed certificate it makes once and keeps, the ``turns:`` URL it hands
out with the credentials, and aioice's TLS client relaying through it once
it trusts that certificate (and refusing it before)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import re
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from aioice import turn as aioice_turn
from cryptography import x509

from bin.assembly import build_app, installers
from tests.conftest import Api, served
from tests.turn.conftest import EchoPeer
from tests.turn.test_turn_server import Collect, echoed
from turn import tls
from turn.http import EMBEDDED, embedded_tls_files
from wadud.config import Settings, sources
from wadud.errors import ConfigError
from wadud.web.api import Role

NOW = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


def names_of(cert_path: Path) -> list[str]:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(n.value) for n in san]


def test_self_signed_is_made_once_and_kept(tmp_path: Path) -> None:
    cert, key = tls.self_signed(tmp_path / "turn-tls", now=NOW)
    first = cert.read_bytes(), key.read_bytes()
    assert key.stat().st_mode & 0o777 == 0o600
    assert names_of(cert) == ["localhost", "127.0.0.1", "::1"]
    again = tls.self_signed(tmp_path / "turn-tls", now=NOW + dt.timedelta(days=300))
    assert again == (cert, key)
    assert (cert.read_bytes(), key.read_bytes()) == first
    # The certificate and key load as a server's pair.
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)


@pytest.mark.parametrize(
    ("when", "names", "spoil"),
    [
        (NOW + dt.timedelta(days=340), tls.LOOPBACK_NAMES, None),  # near its end
        (NOW, ("turn.example.org", "127.0.0.1"), None),  # another name
        (NOW, tls.LOOPBACK_NAMES, "key"),  # a key of another certificate
        (NOW, tls.LOOPBACK_NAMES, "cert"),  # not a certificate
    ],
)
def test_self_signed_is_made_anew(
    tmp_path: Path, when: dt.datetime, names: tuple[str, ...], spoil: str | None
) -> None:
    folder = tmp_path / "turn-tls"
    cert, key = tls.self_signed(folder, now=NOW)
    old = cert.read_bytes()
    if spoil == "key":
        other = tls.self_signed(tmp_path / "other", now=NOW)[1]
        key.write_bytes(other.read_bytes())
    elif spoil == "cert":
        cert.write_text("not a certificate")
    tls.self_signed(folder, names, now=when)
    assert cert.read_bytes() != old
    assert names_of(cert) == list(names)
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    assert not list(folder.glob("*.tmp"))


def test_tls_cert_and_key_go_together(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tls_cert and tls_key"):
        sources.load(env={"WADUD_TURN_TLS_CERT": "/etc/wadud/turn.crt"})
    f = tmp_path / "w.toml"
    f.write_text('[turn]\ntls_cert = "c.pem"\ntls_key = "k.pem"\nlisten_tls = ["0.0.0.0"]\n')
    s = sources.load(file=f, env={})
    # Keys `wadud serve`'s relay reads too; listen_tls is the relay's own.
    assert (s.turn_tls_cert, s.turn_tls_key) == ("c.pem", "k.pem")
    assert s.turn_relay == {"listen_tls": ["0.0.0.0"]}


@pytest.fixture
async def serve(settings: Settings) -> AsyncIterator[Api]:
    settings = dataclasses.replace(settings, turn_embedded_port=0, turn_embedded_tls_port=0)
    async with served(build_app(settings, installers("serve"))) as api:
        yield api


async def test_the_embedded_relay_hands_out_turns_and_relays_over_tls(
    serve: Api, settings: Settings, echo_peer: EchoPeer
) -> None:
    token = await serve.user(Role.PATIENT)
    body = await serve.get("/api/v1/turn/credentials", token=token, expect=200)
    (entry,) = body["ice_servers"]
    kinds = [u.split(":", 1)[0] + "/" + u.rsplit("=", 1)[1] for u in entry["urls"]]
    assert kinds == ["turn/udp", "turn/tcp", "turns/tcp"], entry["urls"]
    found = re.fullmatch(r"turns:([\d.]+):(\d+)\?transport=tcp", entry["urls"][2])
    assert found is not None
    server = (found[1], int(found[2]))
    # The self-signed certificate under the data folder, for 127.0.0.1.
    cert, _ = embedded_tls_files(settings)
    assert Path(cert).parent == settings.data_dir / "turn-tls"
    assert "127.0.0.1" in names_of(Path(cert))
    user, password = entry["username"], entry["credential"]

    # Trusted by nobody: a client that checks certificates refuses it.
    with pytest.raises(ssl.SSLCertVerificationError):
        await aioice_turn.create_turn_endpoint(
            Collect, server, user, password, transport="tcp", ssl=True
        )
    # Trusted by hand (Python: a context with cafile, or SSL_CERT_FILE).
    trusted = ssl.create_default_context(cafile=cert)
    transport, proto = await aioice_turn.create_turn_endpoint(
        Collect, server, user, password, transport="tcp", ssl=trusted
    )
    data = await echoed(transport, proto, echo_peer.address, b"consultation over tls")
    assert data == b"consultation over tls"


async def test_a_taken_tls_port_moves_the_embedded_relay_to_a_free_one(
    settings: Settings,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = dataclasses.replace(settings, turn_embedded_port=0, turn_embedded_tls_port=port)
        client: TestClient[Any, Any] = TestClient(
            TestServer(build_app(settings, installers("serve")))
        )
        await client.start_server()
        try:
            relay = client.app[EMBEDDED]
            ((host, tls_port),) = relay.tls_addresses
            assert ipaddress.ip_address(host).is_loopback and tls_port not in (0, port)
            assert relay.udp_addresses and relay.tcp_addresses
        finally:
            await client.close()
