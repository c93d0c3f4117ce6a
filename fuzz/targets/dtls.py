"""DTLS datagrams (RFC 6347 record framing, RFC 5764 DTLS-SRTP) as the media socket hands them over.

:meth:`DtlsEndpoint.receive` splits a datagram into records to recognise a
resent flight, then gives it to OpenSSL; what OpenSSL writes back is cut on
record boundaries into datagrams of at most the MTU. Each input meets an
endpoint waiting for a ClientHello and one that finished its handshake;
neither may raise for any bytes, and every datagram either sends must be
whole DTLS records.
"""

from __future__ import annotations

import datetime
import struct

from fuzz import Finding
from rtc.dtls import DtlsCertificate, DtlsEndpoint, DtlsRole, DtlsState

NOW = 1000.0
MTU = 1200
_RECORD = struct.Struct("!BHH6sH")

_certificates: tuple[DtlsCertificate, DtlsCertificate] | None = None
_connected: DtlsEndpoint | None = None


def _certs() -> tuple[DtlsCertificate, DtlsCertificate]:
    global _certificates
    if _certificates is None:
        now = datetime.datetime.now(datetime.UTC)
        _certificates = (DtlsCertificate.generate(now), DtlsCertificate.generate(now))
    return _certificates


def endpoint(role: DtlsRole) -> DtlsEndpoint:
    server, client = _certs()
    mine, theirs = (server, client) if role is DtlsRole.SERVER else (client, server)
    return DtlsEndpoint(mine, role, [("sha-256", theirs.fingerprint())], mtu=MTU)


def _whole_records(datagram: bytes) -> None:
    pos = 0
    while pos < len(datagram):
        if pos + _RECORD.size > len(datagram):
            raise Finding("a datagram we send ends in a partial record header")
        pos += _RECORD.size + _RECORD.unpack_from(datagram, pos)[4]
    if pos != len(datagram):
        raise Finding("a datagram we send ends in a partial record")


def _sent(endpoint: DtlsEndpoint) -> list[bytes]:
    out = endpoint.datagrams_to_send()
    for datagram in out:
        _whole_records(datagram)
        if len(datagram) > MTU and _RECORD.size + _RECORD.unpack_from(datagram)[4] != len(datagram):
            raise Finding("a datagram over the MTU holds more than one record")
    while endpoint.next_event() is not None:
        pass
    return out


def _handshaken() -> DtlsEndpoint:
    """A server endpoint whose handshake with a client of ours completed."""
    global _connected
    if _connected is None or _connected.state is not DtlsState.CONNECTED:
        server, client = endpoint(DtlsRole.SERVER), endpoint(DtlsRole.CLIENT)
        server.start(NOW)
        client.start(NOW)
        for _ in range(20):
            moved = False
            for src, dst in ((client, server), (server, client)):
                for datagram in _sent(src):
                    dst.receive(datagram, NOW)
                    moved = True
            if not moved:
                break
        if server.state is not DtlsState.CONNECTED:
            raise RuntimeError(f"the fuzz world's handshake ended {server.state}")
        _connected = server
    return _connected


def check(data: bytes) -> None:
    fresh = endpoint(DtlsRole.SERVER)
    fresh.start(NOW)
    fresh.receive(data, NOW)
    _sent(fresh)
    # The retransmissions up to the endpoint giving up (a few more turns
    # than max_retransmissions: some only re-arm the timer).
    for _ in range(10):
        when = fresh.get_timer()
        if when is None or fresh.state is not DtlsState.CONNECTING:
            break
        fresh.handle_timer(when)
        _sent(fresh)
    connected = _handshaken()
    connected.receive(data, NOW)
    _sent(connected)
