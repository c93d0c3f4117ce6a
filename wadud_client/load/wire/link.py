"""One peer connection's transport, as the load tester runs it: ICE, DTLS-SRTP
and nothing else.

A browser's peer connection brings a media engine; a load tester needs only
the wire. :class:`Link` is a controlling ICE agent toward the server's
ICE-lite candidate (RFC 8445 §7.2, with aioice's STUN codec), a DTLS-SRTP
endpoint (RFC 5764; OpenSSL through pyOpenSSL for the handshake, libsrtp
through pylibsrtp for the packets) and one UDP socket. None of it is the
server's own code (rtc/), so a fault of ours in either is not mirrored on
the other side and hidden.

What arrives is handed on as plain bytes: ``on_rtp(packet, arrived)`` after
unprotecting, ``on_rtcp(packet)`` likewise. A link made with
``unprotect_rtp=False`` hands RTP on as it came, still protected: its header
is in the clear (RFC 3711 §3.1), which is all a subscriber that only counts
reads, and the authentication it skips is the larger part of a packet's
cost. Consent (RFC 7675) is refreshed every :data:`CONSENT_EVERY` seconds
once connected; a link that hears no answer to its checks for
:data:`CONSENT_LOST` seconds is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import pylibsrtp
from aioice import stun
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL, crypto

from wadud_client.network import widen_receive_buffer

__all__ = ["CONSENT_EVERY", "CONSENT_LOST", "Certificate", "Link", "LinkFailed", "Remote"]

#: Seconds between consent checks once connected (RFC 7675 asks 4 to 6).
CONSENT_EVERY = 2.5
#: Seconds without an answer to a check after which the link is lost.
CONSENT_LOST = 15.0
#: Check retransmissions while connecting.
_CHECK_EVERY = 0.1

# (openssl name, libsrtp profile, key bytes, salt bytes): browsers' order.
_PROFILES = [
    (b"SRTP_AEAD_AES_128_GCM", pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 16, 12),
    (b"SRTP_AES128_CM_SHA1_80", pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 16, 14),
]


class LinkFailed(Exception):
    """ICE or DTLS did not complete, or consent was lost."""


@dataclass(frozen=True)
class Remote:
    """What the server's description says of its end of a link."""

    host: str
    port: int
    ufrag: str
    pwd: str
    #: "sha-256 AB:CD:..."
    fingerprint: str
    #: The server's DTLS role: "active" (it connects), else it accepts.
    setup: str


class Certificate:
    """A self-signed ECDSA certificate, as a browser makes one per peer
    connection; one serves every link of a load run."""

    def __init__(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, os.urandom(8).hex())])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .sign(key, hashes.SHA256())
        )
        self.fingerprint = "sha-256 " + ":".join(
            f"{b:02X}" for b in cert.fingerprint(hashes.SHA256())
        )
        self.context = SSL.Context(SSL.DTLS_METHOD)
        self.context.set_options(SSL.OP_NO_TICKET)
        # The peer's certificate is checked against its fingerprint below.
        self.context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *_: True)
        self.context.use_certificate(crypto.X509.from_cryptography(cert))
        self.context.use_privatekey(crypto.PKey.from_cryptography_key(key))
        self.context.set_tlsext_use_srtp(b":".join(p[0] for p in _PROFILES))


class Link(asyncio.DatagramProtocol):
    """One transport: :meth:`connect` (ICE, then DTLS), :meth:`send_rtp`,
    :meth:`send_rtcp`, :meth:`close`."""

    def __init__(
        self,
        certificate: Certificate,
        remote: Remote,
        *,
        ufrag: str,
        pwd: str,
        on_rtp: Callable[[bytes, float], None],
        on_rtcp: Callable[[bytes], None],
        on_lost: Callable[[str], None] = lambda why: None,
        unprotect_rtp: bool = True,
    ) -> None:
        self.remote = remote
        self.unprotect_rtp = unprotect_rtp
        self.ufrag, self.pwd = ufrag, pwd
        self._cert = certificate
        self._on_rtp, self._on_rtcp, self._on_lost = on_rtp, on_rtcp, on_lost
        self._transport: asyncio.DatagramTransport | None = None
        self._addr = (remote.host, remote.port)
        self._tiebreaker = int.from_bytes(os.urandom(8), "big")
        self._checks: set[bytes] = set()
        self._answered = asyncio.get_running_loop().create_future()
        self._handshaken = asyncio.get_running_loop().create_future()
        self._last_answer = 0.0
        self._ssl: SSL.Connection | None = None
        self._tx: pylibsrtp.Session | None = None
        self._rx: pylibsrtp.Session | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self.closed = False
        #: Datagrams that could not be read (a bad SRTP tag, a replay, a
        #: malformed STUN message), counted and dropped.
        self.bad = 0
        self.sent = 0
        #: The authentication tag's length on protected RTP (what a packet
        #: handed on still protected carries past its payload).
        self.tag_len = 0
        #: The socket's inode, for the kernel's drop count (wadud_client.load.drops).
        self.inode = 0

    # -- asyncio ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        arrived = time.monotonic()
        if not data:
            return
        first = data[0]
        if first < 4:  # STUN (RFC 7983)
            self._stun(data)
        elif 19 < first < 64:  # DTLS
            self._dtls(data)
        elif 127 < first < 192 and self._rx is not None:  # RTP or RTCP
            rtcp = len(data) > 1 and 191 < data[1] < 224
            try:
                if rtcp:
                    self._on_rtcp(self._rx.unprotect_rtcp(data))
                elif self.unprotect_rtp:
                    self._on_rtp(self._rx.unprotect(data), arrived)
                else:
                    self._on_rtp(data, arrived)
            except pylibsrtp.Error:
                self.bad += 1
        else:
            self.bad += 1

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error for one datagram; consent decides whether the path is gone

    # -- connecting ------------------------------------------------------------------

    async def connect(self, within: float = 10.0) -> None:
        """ICE, then DTLS; LinkFailed if either does not complete ``within`` seconds."""
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.remote.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        # One process drives many links: a second's media of each waits
        # while the loop is busy with the others (forced past rmem_max where
        # allowed, which the stock 208 KB would otherwise cap it at).
        widen_receive_buffer(sock, 1 << 20)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        self.inode = os.fstat(sock.fileno()).st_ino
        await loop.create_datagram_endpoint(lambda: self, sock=sock)
        try:
            async with asyncio.timeout(within):
                self._check(use_candidate=True, again=_CHECK_EVERY)
                await self._answered
                self._start_dtls()
                await self._handshaken
        except TimeoutError:
            self.close()
            step = "ICE" if not self._answered.done() else "DTLS"
            raise LinkFailed(f"{step} did not complete within {within:g} s") from None
        except LinkFailed:
            self.close()
            raise
        self._last_answer = loop.time()
        self._later(CONSENT_EVERY, self._consent)

    def _later(self, delay: float, fn: Callable[[], None]) -> None:
        if self.closed:
            return
        loop = asyncio.get_running_loop()
        if len(self._timers) > 32:  # keep those yet to fire, for close() to cancel
            self._timers = [t for t in self._timers if t.when() > loop.time()]
        self._timers.append(loop.call_later(delay, fn))

    # -- ICE (controlling; the server is ICE-lite) -----------------------------------

    def _check(self, *, use_candidate: bool, again: float | None) -> None:
        if self.closed or (again is not None and self._answered.done()):
            return
        msg = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        msg.attributes["USERNAME"] = f"{self.remote.ufrag}:{self.ufrag}"
        msg.attributes["PRIORITY"] = 1853824767  # a host candidate's, as browsers compute
        msg.attributes["ICE-CONTROLLING"] = self._tiebreaker
        if use_candidate:
            msg.attributes["USE-CANDIDATE"] = None
        msg.add_message_integrity(self.remote.pwd.encode())
        msg.add_fingerprint()
        self._checks.add(msg.transaction_id)
        if len(self._checks) > 64:
            self._checks = {msg.transaction_id}
        self._send(bytes(msg))
        if again is not None:
            self._later(again, lambda: self._check(use_candidate=True, again=again))

    def _stun(self, data: bytes) -> None:
        try:
            msg = stun.parse_message(data)
        except ValueError:
            self.bad += 1
            return
        if msg.message_class == stun.Class.REQUEST:
            # A lite agent does not check, but answer one as a full agent would.
            reply = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, msg.transaction_id)
            reply.attributes["XOR-MAPPED-ADDRESS"] = self._addr
            reply.add_message_integrity(self.pwd.encode())
            reply.add_fingerprint()
            self._send(bytes(reply))
            return
        if msg.transaction_id not in self._checks:
            return
        self._checks.discard(msg.transaction_id)
        if msg.message_class == stun.Class.RESPONSE:
            self._last_answer = asyncio.get_running_loop().time()
            if not self._answered.done():
                self._answered.set_result(None)
        elif not self._answered.done():
            self._answered.set_exception(LinkFailed(f"ICE check refused: {msg.attributes}"))

    def _consent(self) -> None:
        if self.closed:
            return
        silent = asyncio.get_running_loop().time() - self._last_answer
        if silent > CONSENT_LOST:
            self._lose(f"no answer to consent checks for {silent:.0f} s")
            return
        self._check(use_candidate=False, again=None)
        self._later(CONSENT_EVERY, self._consent)

    # -- DTLS-SRTP -------------------------------------------------------------------

    def _start_dtls(self) -> None:
        self._ssl = SSL.Connection(self._cert.context, None)
        if self.remote.setup == "active":
            self._ssl.set_accept_state()
        else:
            self._ssl.set_connect_state()
        self._handshake()
        self._dtls_timer()

    def _dtls_timer(self) -> None:
        if self._ssl is None or self._handshaken.done() or self.closed:
            return
        with contextlib.suppress(SSL.Error):
            if self._ssl.DTLSv1_handle_timeout():
                self._flush()
        wait = self._ssl.DTLSv1_get_timeout()
        self._later(wait if wait is not None else 0.1, self._dtls_timer)

    def _dtls(self, data: bytes) -> None:
        if self._ssl is None:
            return
        self._ssl.bio_write(data)
        if not self._handshaken.done():
            self._handshake()
            return
        with contextlib.suppress(SSL.Error):
            self._ssl.recv(1500)  # alerts; a close_notify ends nothing we wait for
        self._flush()

    def _handshake(self) -> None:
        assert self._ssl is not None
        try:
            self._ssl.do_handshake()
        except SSL.WantReadError:
            self._flush()
            return
        except SSL.Error as exc:
            self._flush()
            if not self._handshaken.done():
                self._handshaken.set_exception(LinkFailed(f"DTLS handshake failed: {exc}"))
            return
        self._flush()
        try:
            self._keys()
        except LinkFailed as exc:
            if not self._handshaken.done():
                self._handshaken.set_exception(exc)
            return
        if not self._handshaken.done():
            self._handshaken.set_result(None)

    def _keys(self) -> None:
        assert self._ssl is not None
        cert = self._ssl.get_peer_certificate()
        if cert is None:
            raise LinkFailed("the server sent no DTLS certificate")
        algorithm, _, expected = self.remote.fingerprint.partition(" ")
        got = cert.to_cryptography().fingerprint(hashes.SHA256()) if algorithm == "sha-256" else b""
        if ":".join(f"{b:02X}" for b in got) != expected.upper():
            raise LinkFailed("the server's DTLS certificate is not the one its SDP names")
        chosen = self._ssl.get_selected_srtp_profile()
        profile = next((p for p in _PROFILES if p[0] == chosen), None)
        if profile is None:
            raise LinkFailed(f"no SRTP profile agreed ({chosen!r})")
        _, srtp_profile, key_len, salt_len = profile
        self.tag_len = 16 if srtp_profile == pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM else 10
        material = self._ssl.export_keying_material(
            b"EXTRACTOR-dtls_srtp", 2 * (key_len + salt_len)
        )
        client_key = material[:key_len] + material[2 * key_len : 2 * key_len + salt_len]
        server_key = material[key_len : 2 * key_len] + material[2 * key_len + salt_len :]
        we_are_client = self.remote.setup != "active"
        tx_key, rx_key = (client_key, server_key) if we_are_client else (server_key, client_key)
        self._tx = pylibsrtp.Session(self._policy(tx_key, srtp_profile, outbound=True))
        self._rx = pylibsrtp.Session(self._policy(rx_key, srtp_profile, outbound=False))

    @staticmethod
    def _policy(key: bytes, profile: int, *, outbound: bool) -> pylibsrtp.Policy:
        policy = pylibsrtp.Policy(
            key=key,
            ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND
            if outbound
            else pylibsrtp.Policy.SSRC_ANY_INBOUND,
            srtp_profile=profile,
        )
        policy.allow_repeat_tx = True
        policy.window_size = 1024
        return policy

    def _flush(self) -> None:
        assert self._ssl is not None
        while True:
            try:
                data = self._ssl.bio_read(1500)
            except SSL.Error:
                return
            if not data:
                return
            self._send(data)

    # -- sending ---------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._tx is not None and not self.closed

    def send_rtp(self, packet: bytes) -> None:
        if self._tx is not None and not self.closed:
            self._send(self._tx.protect(packet))

    def send_rtcp(self, packet: bytes) -> None:
        if self._tx is not None and not self.closed:
            self._send(self._tx.protect_rtcp(packet))

    def _send(self, data: bytes) -> None:
        if self._transport is not None and not self.closed:
            self._transport.sendto(data, self._addr)
            self.sent += 1

    def _lose(self, why: str) -> None:
        self.close()
        self._on_lost(why)

    def close(self) -> None:
        if self.closed:
            return
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self._ssl is not None and self._tx is not None:
            # close_notify, sent while the link still sends.
            with contextlib.suppress(SSL.Error):
                self._ssl.shutdown()
            self._flush()
        self.closed = True
        if self._transport is not None:
            self._transport.close()
