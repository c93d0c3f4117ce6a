"""DTLS 1.2 for DTLS-SRTP, as a sans-I/O core (RFC 6347, RFC 5764, RFC 8122, RFC 8842).

OpenSSL (through pyOpenSSL's memory BIOs) does the cryptography and the
handshake; this module feeds it datagrams, collects what it writes, and turns
the result into events and a timer. It never touches a socket or the clock.

The machine, in one table (:data:`TRANSITIONS`):

* An endpoint is NEW until :meth:`DtlsEndpoint.start`; then CONNECTING while
  the handshake runs. The client writes its ClientHello at once; the server
  waits for one.
* CONNECTING becomes CONNECTED when OpenSSL reports the handshake done, the
  peer certificate matches the SDP fingerprint and a use_srtp profile was
  agreed; the SRTP keying material is exported then (RFC 5764 section 4.2) and
  :class:`HandshakeComplete` carries it.
* Any fault while CONNECTING (a fatal alert, a fingerprint mismatch, no SRTP
  profile, too many retransmissions) makes it FAILED; a fatal alert after the
  handshake does too. A close_notify either way makes it CLOSED. Both are
  terminal.

Retransmission (RFC 6347 section 4.2.4) is a timer output. After each flight
the timer is armed with OpenSSL's own timeout (``DTLSv1_get_timeout``, 1 s at
first). When it fires, ``DTLSv1_handle_timeout`` lets OpenSSL retransmit with
fresh record numbers. OpenSSL measures that timeout on its own wall clock,
which is not the caller's ``now``; a loop that wakes a moment early waits for
it, but when the two really disagree (a fake clock in tests, a wall-clock step)
OpenSSL writes nothing and the core resends the last flight's datagrams byte
for byte and doubles its own timeout, capped at 60 s. Such a copy recovers lost
datagrams, but not records OpenSSL read and discarded (a ChangeCipherSpec that
overtook the messages before it): the peer's replay check drops the copy, and
only OpenSSL's own retransmission, which the production clock gets, repairs
that. While the handshake runs each side's timer covers its own unanswered
flight, so that is enough; but the final flight (the server's ChangeCipherSpec
and Finished) has no timer, and the peer's byte-for-byte copy of the flight
before it is dropped unread by OpenSSL's replay check. So the side that sent
the final flight answers a datagram whose handshake records it has all seen
before with its final flight again (RFC 6347 section 4.2.4). Only that side
does it, and only then, so duplicates cannot bounce between the two.

OpenSSL writes each record to the memory BIO back to back; the core splits
them on record boundaries and packs whole records into datagrams of at most
``mtu`` bytes, so no record straddles two datagrams.
"""

from __future__ import annotations

import contextlib
import datetime
import enum
import secrets
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from OpenSSL import SSL, crypto

from rtc.errors import (
    DtlsError,
    DtlsFingerprintError,
    DtlsHandshakeError,
    DtlsStateError,
    DtlsTimeoutError,
)
from rtc.machine import Machine
from wadud import certs

__all__ = [
    "DEFAULT_PROFILES",
    "SRTP_AEAD_AES_128_GCM",
    "SRTP_AES128_CM_SHA1_80",
    "ApplicationData",
    "Closed",
    "DtlsCertificate",
    "DtlsEndpoint",
    "DtlsEvent",
    "DtlsRole",
    "DtlsState",
    "HandshakeComplete",
    "HandshakeFailed",
    "SrtpKeys",
    "SrtpProfile",
    "certificate_fingerprint",
    "local_setup",
    "role_for_remote_setup",
]

# --- roles (RFC 8842 section 5) -----------------------------------------------


class DtlsRole(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


def role_for_remote_setup(remote_setup: str, *, default: DtlsRole = DtlsRole.CLIENT) -> DtlsRole:
    """Our DTLS role from the peer's ``a=setup`` (RFC 8842 section 5.2, RFC 4145 section 4).

    The server takes the role the browser leaves it: ``active`` makes us the
    DTLS server, ``passive`` the client, ``actpass`` leaves the choice to us
    (``default``).
    """
    setup = remote_setup.strip().lower()
    if setup == "active":
        return DtlsRole.SERVER
    if setup == "passive":
        return DtlsRole.CLIENT
    if setup == "actpass":
        return default
    raise DtlsError(f"unusable a=setup value {remote_setup!r}")


def local_setup(role: DtlsRole) -> str:
    """The ``a=setup`` value that announces ``role`` in an answer (RFC 8842 section 5.3)."""
    return "active" if role is DtlsRole.CLIENT else "passive"


# --- SRTP profiles and keys (RFC 5764 section 4.1.2 and 4.2, RFC 7714 section 14.2) ---


@dataclass(frozen=True, slots=True)
class SrtpProfile:
    """A use_srtp protection profile: OpenSSL's name and its master key and salt sizes."""

    name: str
    key_length: int
    salt_length: int


SRTP_AEAD_AES_128_GCM = SrtpProfile("SRTP_AEAD_AES_128_GCM", 16, 12)
SRTP_AES128_CM_SHA1_80 = SrtpProfile("SRTP_AES128_CM_SHA1_80", 16, 14)
# Our preference order: the server's use_srtp choice follows it, so AEAD wins
# whenever the browser offers it.
DEFAULT_PROFILES: tuple[SrtpProfile, ...] = (SRTP_AEAD_AES_128_GCM, SRTP_AES128_CM_SHA1_80)

EXPORTER_LABEL = b"EXTRACTOR-dtls_srtp"


@dataclass(frozen=True, slots=True)
class SrtpKeys:
    """SRTP master keys and salts exported from a DTLS association (RFC 5764 section 4.2)."""

    profile: SrtpProfile
    # Secrets stay out of reprs, so an event in a log line leaks no key.
    client_key: bytes = field(repr=False)
    client_salt: bytes = field(repr=False)
    server_key: bytes = field(repr=False)
    server_salt: bytes = field(repr=False)

    @classmethod
    def from_material(cls, profile: SrtpProfile, material: bytes) -> SrtpKeys:
        """Split exporter output: client key, server key, client salt, server salt."""
        k, s = profile.key_length, profile.salt_length
        if len(material) != 2 * (k + s):
            raise DtlsError("keying material has the wrong length for the profile")
        return cls(
            profile,
            client_key=material[:k],
            server_key=material[k : 2 * k],
            client_salt=material[2 * k : 2 * k + s],
            server_salt=material[2 * k + s :],
        )

    def local_key(self, role: DtlsRole) -> bytes:
        """Key then salt that ``role`` protects its outgoing packets with."""
        if role is DtlsRole.CLIENT:
            return self.client_key + self.client_salt
        return self.server_key + self.server_salt

    def remote_key(self, role: DtlsRole) -> bytes:
        """Key then salt of the peer of ``role``, to unprotect what it sends."""
        return self.local_key(DtlsRole.SERVER if role is DtlsRole.CLIENT else DtlsRole.CLIENT)


# --- certificates and fingerprints (RFC 8122 section 5) -------------------------

_DIGESTS: dict[str, type[hashes.HashAlgorithm]] = {
    "sha-1": hashes.SHA1,
    "sha-224": hashes.SHA224,
    "sha-256": hashes.SHA256,
    "sha-384": hashes.SHA384,
    "sha-512": hashes.SHA512,
}

# In DTLS 1.2 a suite names the key of the *server's* certificate, so the
# list carries both kinds (RFC 8827 section 6.5 requires
# ECDHE_RSA_WITH_AES_128_GCM_SHA256 and ECDHE_ECDSA_WITH_AES_128_GCM_SHA256).
# As the client we must accept an RSA server (GStreamer's webrtcbin); our own
# P-256 certificate then signs only our CertificateVerify, which the suite
# does not constrain. As the server OpenSSL picks only suites our certificate
# can serve, the ECDSA ones. OpenSSL's default signature algorithms already
# include the RSA ones (PKCS#1 and PSS) for the peer's certificate.
_CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    b"ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA"
)
_DTLS1_2 = 0xFEFD  # DTLS1_2_VERSION; pyOpenSSL names no DTLS version constants


def certificate_fingerprint(certificate: x509.Certificate, algorithm: str = "sha-256") -> str:
    """Upper-case, colon-separated digest of the DER certificate (RFC 8122 section 5)."""
    try:
        digest = _DIGESTS[algorithm.lower()]()
    except KeyError:
        raise DtlsError(f"unsupported fingerprint algorithm {algorithm!r}") from None
    return certificate.fingerprint(digest).hex(":").upper()


class DtlsCertificate:
    """A self-signed certificate and the OpenSSL contexts built on it.

    Ours is always ECDSA P-256 (:meth:`generate`); an RSA key is taken too,
    as a test's stand-in for a peer such as GStreamer. One certificate serves
    every peer of a worker; each :class:`DtlsEndpoint` gets its own connection
    on a context shared per SRTP profile list.
    """

    def __init__(
        self, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, certificate: x509.Certificate
    ) -> None:
        self.key = key
        self.certificate = certificate
        self._contexts: dict[tuple[SrtpProfile, ...], SSL.Context] = {}

    @classmethod
    def generate(
        cls,
        now: datetime.datetime,
        *,
        lifetime: datetime.timedelta = datetime.timedelta(days=365),
    ) -> DtlsCertificate:
        """A fresh key and certificate, valid from a day before ``now`` (skew) for ``lifetime``.

        WebRTC peers authenticate the certificate by its SDP fingerprint
        (RFC 8827 section 6.5), not by its issuer, so it is self-signed with a
        random common name.
        """
        key, certificate = certs.self_signed(
            secrets.token_hex(16), now - datetime.timedelta(days=1), now + lifetime
        )
        return cls(key, certificate)

    def fingerprint(self, algorithm: str = "sha-256") -> str:
        """This certificate's fingerprint for ``a=fingerprint`` (RFC 8122 section 5)."""
        return certificate_fingerprint(self.certificate, algorithm)

    def context(self, profiles: tuple[SrtpProfile, ...]) -> SSL.Context:
        ctx = self._contexts.get(profiles)
        if ctx is None:
            ctx = SSL.Context(SSL.DTLS_METHOD)
            ctx.set_min_proto_version(_DTLS1_2)
            ctx.set_max_proto_version(_DTLS1_2)
            ctx.use_certificate(self.certificate)
            ctx.use_privatekey(self.key)
            ctx.set_cipher_list(_CIPHERS)
            # Session tickets and renegotiation have no use in WebRTC and a
            # renegotiation would be a second handshake our state machine does
            # not have.
            ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_RENEGOTIATION)
            # Once the handshake is over DTLS only carries an alert now and
            # then (media is SRTP): its record buffers go back while idle,
            # 7 KB per transport.
            ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
            # Each connection installs its own callback that checks the
            # fingerprint; this one only makes the server ask for a certificate.
            ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _refuse)
            ctx.set_tlsext_use_srtp(b":".join(p.name.encode() for p in profiles))
            self._contexts[profiles] = ctx
        return ctx


def _refuse(conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
    return False


class _PeerCheck:
    """An endpoint's verify callback: the peer's leaf certificate must match
    the SDP's fingerprints (RFC 8122 section 5); self-signed by design, that
    is all that authenticates it. An object of its own, not a method of the
    endpoint: pyOpenSSL keeps the callback in a helper that refers to itself,
    a cycle only the garbage collector ends, and a bound method in it would
    hold the endpoint and its ``SSL.Connection`` (about 90 KB of OpenSSL's
    memory) until a full collection, which came rarely: a busy ``wadud
    serve`` grew by about 7 MB a round of 84 calls that had ended."""

    __slots__ = ("fingerprints", "mismatch")

    def __init__(self, fingerprints: list[tuple[str, str]]) -> None:
        self.fingerprints = fingerprints
        #: The peer's certificate did not match (the handshake then fails).
        self.mismatch = False

    def __call__(
        self, conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
    ) -> bool:
        if depth != 0:
            return True
        if not self.matches(cert.to_cryptography()):
            self.mismatch = True
            return False
        return True

    def matches(self, leaf: x509.Certificate) -> bool:
        return all(
            certificate_fingerprint(leaf, algorithm) == value
            for algorithm, value in self.fingerprints
        )


# --- events -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HandshakeComplete:
    """The handshake finished and the peer proved the SDP fingerprint (RFC 5764 section 4.2).

    ``cipher`` is OpenSSL's name of the suite agreed (``ECDHE-RSA-AES128-GCM-SHA256``).
    """

    role: DtlsRole
    profile: SrtpProfile
    keys: SrtpKeys
    cipher: str


@dataclass(frozen=True, slots=True)
class HandshakeFailed:
    """The handshake failed; ``error`` says why (its type tells fingerprint from timeout)."""

    error: DtlsError


@dataclass(frozen=True, slots=True)
class ApplicationData:
    """Decrypted application data (SCTP for data channels, RFC 8261)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Closed:
    """The association ended: ``alert`` is None for a close_notify, else what went wrong."""

    alert: str | None


DtlsEvent = HandshakeComplete | HandshakeFailed | ApplicationData | Closed


# --- the state machine ----------------------------------------------------------


class DtlsState(enum.Enum):
    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    FAILED = "failed"
    CLOSED = "closed"


class _HandshakeInput(enum.Enum):
    START = "start"
    COMPLETE = "complete"
    FAIL = "fail"
    CLOSE = "close"


_S, _In = DtlsState, _HandshakeInput

TRANSITIONS: dict[tuple[DtlsState, _HandshakeInput], DtlsState] = {
    (_S.NEW, _In.START): _S.CONNECTING,
    (_S.NEW, _In.CLOSE): _S.CLOSED,
    (_S.CONNECTING, _In.COMPLETE): _S.CONNECTED,
    (_S.CONNECTING, _In.FAIL): _S.FAILED,
    (_S.CONNECTING, _In.CLOSE): _S.CLOSED,
    (_S.CONNECTED, _In.FAIL): _S.FAILED,
    (_S.CONNECTED, _In.CLOSE): _S.CLOSED,
}


# --- record framing (RFC 6347 section 4.1) -------------------------------------

_RECORD = struct.Struct("!BHH6sH")  # type, version, epoch, sequence number, length
_RECORD_HEADER = 13
_CHANGE_CIPHER_SPEC = 20
_HANDSHAKE = 22
_MAX_RTO = 60.0
_EARLY = 0.1
_SEEN_LIMIT = 256


def _records(data: bytes) -> Iterator[tuple[int, int, bytes, int, int]]:
    """(type, epoch, sequence, start, end) of each whole record; stops at a malformed one."""
    pos, n = 0, len(data)
    while pos + _RECORD_HEADER <= n:
        rtype, _version, epoch, seq, length = _RECORD.unpack_from(data, pos)
        end = pos + _RECORD_HEADER + length
        if end > n:
            return
        yield rtype, epoch, seq, pos, end
        pos = end


def _pack(data: bytes, mtu: int) -> list[bytes]:
    """Whole records packed into datagrams of at most ``mtu`` bytes (one oversized record alone)."""
    datagrams: list[bytes] = []
    start = last = 0
    for _t, _e, _s, pos, end in _records(data):
        if end - start > mtu and pos > start:
            datagrams.append(data[start:pos])
            start = pos
        last = end
    if last < len(data):
        # OpenSSL never writes a partial record; keep anything odd rather than lose it.
        last = len(data)
    if last > start:
        datagrams.append(data[start:last])
    return datagrams


class DtlsEndpoint(Machine[DtlsState, _HandshakeInput, DtlsEvent]):
    """One DTLS-SRTP association, sans-I/O (RFC 6347, RFC 5764; aioquic's shape).

    Feed datagrams with :meth:`receive`, send what :meth:`datagrams_to_send`
    returns, call :meth:`handle_timer` at :meth:`get_timer`, and read
    :meth:`next_event` until it returns None.

    ``remote_fingerprints`` are the SDP's ``a=fingerprint`` pairs (algorithm,
    value); the peer's certificate must match every one whose algorithm we
    know, and at least one must be known (RFC 8122 section 5).
    """

    def __init__(
        self,
        certificate: DtlsCertificate,
        role: DtlsRole,
        remote_fingerprints: Sequence[tuple[str, str]],
        *,
        profiles: Sequence[SrtpProfile] = DEFAULT_PROFILES,
        mtu: int = 1200,
        max_retransmissions: int = 6,
    ) -> None:
        # The state shows in the events (HandshakeComplete, HandshakeFailed, Closed).
        super().__init__(TRANSITIONS, DtlsState.NEW, DtlsStateError, None)
        self.role = role
        self.mtu = mtu
        self.max_retransmissions = max_retransmissions
        self._check = _PeerCheck(self._usable(remote_fingerprints))
        self._profiles = tuple(profiles)
        self._ssl = SSL.Connection(certificate.context(self._profiles))
        self._ssl.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._check)
        if role is DtlsRole.CLIENT:
            self._ssl.set_connect_state()
        else:
            self._ssl.set_accept_state()
        self._out: list[bytes] = []
        self._last_flight: list[bytes] = []
        self._final_flight_ours = False
        self._seen: set[tuple[int, bytes]] = set()
        self._deadline: float | None = None
        self._rto = 1.0
        self._retransmissions = 0
        self.keys: SrtpKeys | None = None
        # Datagrams dropped because they were not DTLS or came in a state that takes none.
        self.dropped = 0

    @staticmethod
    def _usable(fingerprints: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        usable = [
            (algorithm.lower(), value.strip().upper())
            for algorithm, value in fingerprints
            if algorithm.lower() in _DIGESTS
        ]
        if not usable:
            raise DtlsFingerprintError("no remote fingerprint with a supported hash function")
        return usable

    # -- the public sans-I/O surface ------------------------------------------

    def start(self, now: float) -> None:
        """Begin the handshake: the client writes its ClientHello (RFC 6347 section 4.2.1)."""
        if self.state is not DtlsState.NEW:
            raise DtlsStateError(f"start() in state {self.state.value}")
        self._transition(_HandshakeInput.START, "started")
        if self.role is DtlsRole.CLIENT:
            self._handshake(now)

    def receive(self, data: bytes, now: float) -> None:
        """Process one datagram whose first byte is in DTLS's range (RFC 7983 section 7)."""
        if not data or not 20 <= data[0] <= 63 or self.state not in _RECEIVING:
            self.dropped += 1
            return
        retransmitted = self._peer_retransmitted(data)
        self._ssl.bio_write(data)
        if self.state is DtlsState.CONNECTING:
            self._handshake(now)
        elif not self._read_application() and retransmitted and self._final_flight_ours:
            # RFC 6347 section 4.2.4: the peer resent its last flight, so our
            # final flight was lost; OpenSSL drops a byte-for-byte copy unread.
            self._out.extend(self._last_flight)

    def datagrams_to_send(self) -> list[bytes]:
        """Datagrams to send to the peer, oldest first; the queue is emptied."""
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` wants to be called (a retransmission), or None."""
        return self._deadline

    def handle_timer(self, now: float) -> None:
        """Retransmit the last flight, or fail after too many (RFC 6347 section 4.2.4.1)."""
        if self._deadline is None or now < self._deadline:
            return
        if self.state is not DtlsState.CONNECTING:
            self._deadline = None
            return
        if self._retransmissions >= self.max_retransmissions:
            self._fail(DtlsTimeoutError("no answer after the last retransmission"))
            return
        try:
            self._ssl.DTLSv1_handle_timeout()
        except SSL.Error as exc:
            self._fail(DtlsHandshakeError(f"retransmission failed: {exc}"))
            return
        native = self._drain()
        if native:
            # OpenSSL retransmitted with fresh record numbers and doubled its timeout.
            self._last_flight = native
            self._out.extend(native)
            timeout = self._ssl.DTLSv1_get_timeout()
            self._rto = timeout if timeout is not None else min(self._rto * 2, _MAX_RTO)
        else:
            remaining = self._ssl.DTLSv1_get_timeout()
            if remaining is not None and remaining <= _EARLY:
                # Woken a moment before OpenSSL's clock says so: wait for it.
                self._deadline = now + remaining
                return
            # OpenSSL's wall clock disagrees with ``now`` (a fake clock, a clock
            # step): resend our copy. It recovers lost datagrams, not records
            # OpenSSL read and discarded, which only its own retransmission can.
            self._out.extend(self._last_flight)
            self._rto = min(self._rto * 2, _MAX_RTO)
        self._retransmissions += 1
        self._deadline = now + self._rto

    def send(self, data: bytes) -> None:
        """Encrypt application data (SCTP) for the peer."""
        if self.state is not DtlsState.CONNECTED:
            raise DtlsStateError(f"send() in state {self.state.value}")
        try:
            self._ssl.send(data)
        except SSL.Error as exc:
            raise DtlsStateError(f"cannot send: {exc}") from exc
        self._out.extend(self._drain())

    def close(self) -> None:
        """Send close_notify if the association is up, and stop (RFC 5246 section 7.2.1)."""
        if self.state in (DtlsState.CONNECTING, DtlsState.CONNECTED):
            # A half-done handshake may have nothing to close.
            with contextlib.suppress(SSL.Error):
                self._ssl.shutdown()
            self._out.extend(self._drain())
        if self.state in (DtlsState.NEW, DtlsState.CONNECTING, DtlsState.CONNECTED):
            self._transition(_HandshakeInput.CLOSE, "closed")
        self._deadline = None

    # -- internals ------------------------------------------------------------

    def _peer_retransmitted(self, data: bytes) -> bool:
        """True if every handshake record in ``data`` was seen before (a resent flight)."""
        records = [
            (epoch, seq)
            for rtype, epoch, seq, _s, _e in _records(data)
            if rtype in (_HANDSHAKE, _CHANGE_CIPHER_SPEC)
        ]
        if not records:
            return False
        repeated = all(r in self._seen for r in records)
        if len(self._seen) > _SEEN_LIMIT:
            self._seen.clear()
        self._seen.update(records)
        return repeated

    def _drain(self) -> list[bytes]:
        chunks: list[bytes] = []
        while True:
            try:
                chunk = self._ssl.bio_read(65536)
            except SSL.WantReadError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return _pack(b"".join(chunks), self.mtu) if chunks else []

    def _handshake(self, now: float) -> None:
        done = False
        try:
            self._ssl.do_handshake()
        except SSL.WantReadError:
            pass
        except SSL.Error as exc:
            self._out.extend(self._drain())  # the fatal alert, if OpenSSL wrote one
            if self._check.mismatch:
                self._fail(DtlsFingerprintError("peer certificate does not match a=fingerprint"))
            else:
                self._fail(DtlsHandshakeError(f"handshake failed: {exc}"))
            return
        else:
            done = True
        flight = self._drain()
        if flight:
            self._last_flight = flight
            self._out.extend(flight)
            self._final_flight_ours = done
            self._retransmissions = 0
            timeout = None if done else self._ssl.DTLSv1_get_timeout()
            if timeout is not None:
                self._rto = timeout
                self._deadline = now + timeout
            else:
                self._deadline = None
        if done:
            self._complete()

    def _complete(self) -> None:
        self._deadline = None
        peer = self._ssl.get_peer_certificate(as_cryptography=True)
        if peer is None or not self._check.matches(peer):
            self._fail(DtlsFingerprintError("peer certificate does not match a=fingerprint"))
            return
        selected = self._ssl.get_selected_srtp_profile().decode("ascii", "replace")
        profile = next((p for p in self._profiles if p.name == selected), None)
        if profile is None:
            self._fail(DtlsHandshakeError("no use_srtp profile was negotiated (RFC 5764 4.1.1)"))
            return
        material = self._ssl.export_keying_material(
            EXPORTER_LABEL, 2 * (profile.key_length + profile.salt_length)
        )
        self.keys = SrtpKeys.from_material(profile, material)
        self._transition(_HandshakeInput.COMPLETE, f"handshake done ({profile.name})")
        cipher = self._ssl.get_cipher_name() or ""
        self._events.append(HandshakeComplete(self.role, profile, self.keys, cipher))
        # Application data may have come in the same datagram as the last flight.
        self._read_application()

    def _read_application(self) -> bool:
        """Read what OpenSSL decrypted; True if OpenSSL wrote anything back."""
        while self.state is DtlsState.CONNECTED:
            try:
                data = self._ssl.recv(65536)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self._out.extend(self._drain())
                self._transition(_HandshakeInput.CLOSE, "close_notify from the peer")
                self._events.append(Closed(None))
                break
            except SSL.Error as exc:
                self._out.extend(self._drain())
                self._transition(_HandshakeInput.FAIL, f"fatal: {exc}")
                self._events.append(Closed(f"fatal: {exc}"))
                break
            if data:
                self._events.append(ApplicationData(data))
        written = self._drain()
        self._out.extend(written)
        return bool(written)

    def _fail(self, error: DtlsError) -> None:
        self._deadline = None
        self._transition(_HandshakeInput.FAIL, str(error))
        self._events.append(HandshakeFailed(error))


_RECEIVING = frozenset({DtlsState.CONNECTING, DtlsState.CONNECTED})
