"""ICE-lite agent, sans-I/O (RFC 8445 sections 2.5 and 7.3, consent freshness of RFC 7675).

A lite agent gathers only host candidates, sends no checks and is always the
controlled agent: the browser (a full agent) checks, and nominates a pair with
USE-CANDIDATE. One :class:`IceLiteAgent` per peer connection answers its
Binding requests with the short-term credentials from the SDP. STUN framing is
the project's own codec, :mod:`rtc.stun`.

The machine, in one table (:data:`TRANSITIONS`):

* NEW until the first valid check, then CHECKING: the peer has proved it
  knows our password, but has picked no pair yet.
* A valid check with USE-CANDIDATE nominates its pair: CONNECTED, and that
  remote address becomes the selected one (:class:`SelectedAddress`). A later
  nomination of another address (the browser moved) selects it instead.
* Consent (RFC 7675 section 5.1): each valid check from the selected address
  refreshes it. After ``disconnect_timeout`` without one the agent is
  DISCONNECTED (media may still flow; the peer's checks may come back and make
  it CONNECTED again); after ``consent_timeout`` (30 s, RFC 7675 section 5.1)
  consent has expired and it is FAILED: the caller must stop sending.
* A peer that never nominates within ``connect_timeout`` is FAILED too.
* An ICE restart (RFC 8445 section 9, :meth:`IceLiteAgent.restart`) gives the
  agent new local credentials while it keeps its state: checks under the
  previous credentials are still answered, from the addresses they validated,
  until the peer nominates a pair under the new ones. That nomination retires
  the previous credentials (:class:`CredentialsRetired`) and forgets every
  address only they had validated (:class:`ForgottenAddress`): consent on the
  old path ends, and the selected path is the new one.
* A NAT rebinding: the peer's traffic arrives from a new address of the same
  pair. A valid check from an address that is not the selected one moves the
  selected path there when the selected address has sent no consent check for
  ``rebind_quiet`` seconds (longer than a browser's consent interval, so a
  live path is never taken over by a check on a backup pair); media that
  authenticated under our SRTP keys from a new address
  (:meth:`IceLiteAgent.rebind`, the caller verified it) moves it at once.
  Neither refreshes consent by itself: the peer's next check does.
* FAILED and CLOSED are terminal: requests are no longer answered, so a peer
  that comes back after its consent expired needs a new transport.

Every deadline is a timer output (:meth:`IceLiteAgent.get_timer`); the agent
never reads the clock.
"""

from __future__ import annotations

import enum
import secrets
from collections import Counter
from dataclasses import dataclass

from rtc import stun
from rtc.errors import IceCheckError, IceStateError, StunParseError
from rtc.machine import Machine

__all__ = [
    "CONSENT_TIMEOUT",
    "Address",
    "CredentialsRetired",
    "ForgottenAddress",
    "IceEvent",
    "IceLiteAgent",
    "IceState",
    "SelectedAddress",
    "StateChanged",
    "ValidatedAddress",
    "local_ufrag_of",
    "random_credentials",
]

Address = tuple[str, int]

CONSENT_TIMEOUT = 30.0  # RFC 7675 section 5.1
# Browsers check a selected pair every 2.5 s (Chromium) to 5 s +-20 % (Firefox,
# RFC 7675 section 5.1): two missed Firefox checks mean trouble.
DISCONNECT_TIMEOUT = 10.0
CONNECT_TIMEOUT = 30.0
# A non-nominating check from a new address moves the selected path only when
# the selected address has sent no consent check this long: longer than
# Chromium's 2.5 s and Firefox's 5 s +-20 % consent intervals, so a check on a
# backup pair never takes a live path over. Media moves it sooner (rebind).
REBIND_QUIET = 6.0
# A browser has a handful of candidates; more validated addresses than this
# for one agent is somebody spraying checks, and the oldest are forgotten.
MAX_VALIDATED = 16

_ICE_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/"


def random_credentials() -> tuple[str, str]:
    """A fresh ufrag (8 ice-chars) and password (24 ice-chars) (RFC 8839 section 5.4).

    The RFC asks for at least 24 bits of randomness in the ufrag and 128 in
    the password; 6 bits per character gives 48 and 144.
    """
    ufrag = "".join(secrets.choice(_ICE_CHARS) for _ in range(8))
    pwd = "".join(secrets.choice(_ICE_CHARS) for _ in range(24))
    return ufrag, pwd


def local_ufrag_of(data: bytes) -> str | None:
    """Our ufrag from a Binding request's USERNAME (``local:remote``), or None.

    For demultiplexing many peers on one socket (RFC 8445 section 7.3: the
    request's USERNAME starts with the receiver's ufrag). It checks framing
    only, not integrity: the agent it selects does that. Never raises.
    """
    if not stun.is_stun(data):
        return None
    try:
        msg = stun.StunMessage.parse(data)
        if msg.method != stun.BINDING or msg.cls != stun.REQUEST:
            return None
        username = msg.decoded(stun.USERNAME)
    except (StunParseError, ValueError):
        return None
    if not isinstance(username, str):
        return None
    local, sep, _remote = username.partition(":")
    return local if sep and local else None


# --- events ---------------------------------------------------------------------


class IceState(enum.Enum):
    NEW = "new"
    CHECKING = "checking"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    FAILED = "failed"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class StateChanged:
    """The agent moved from ``old`` to ``new``; ``reason`` names the input that did it."""

    old: IceState
    new: IceState
    reason: str


@dataclass(frozen=True, slots=True)
class ValidatedAddress:
    """A remote address proved it knows our password: route its datagrams to this peer."""

    address: Address


@dataclass(frozen=True, slots=True)
class SelectedAddress:
    """The peer nominated this address (RFC 8445 section 7.3.1.5): send media there."""

    address: Address


@dataclass(frozen=True, slots=True)
class ForgottenAddress:
    """``address`` is no longer valid for this peer: route nothing from it.

    Either too many addresses (the oldest goes) or an ICE restart completed
    and only the previous credentials had validated it.
    """

    address: Address


@dataclass(frozen=True, slots=True)
class CredentialsRetired:
    """An ICE restart completed: checks under ``ufrag`` (our previous local
    ufrag) are no longer answered, and nothing should route them here."""

    ufrag: str


IceEvent = StateChanged | ValidatedAddress | SelectedAddress | ForgottenAddress | CredentialsRetired


# --- the state machine ------------------------------------------------------------


class _Input(enum.Enum):
    CHECK = "check"  # a valid check from any address
    CONSENT = "consent"  # a valid check from the selected address
    NOMINATE = "nominate"  # a valid check with USE-CANDIDATE
    SILENCE = "silence"  # disconnect_timeout without consent
    EXPIRE = "expire"  # consent or connect timeout
    CLOSE = "close"


_S, _In = IceState, _Input

TRANSITIONS: dict[tuple[IceState, _Input], IceState] = {
    (_S.NEW, _In.CHECK): _S.CHECKING,
    (_S.NEW, _In.EXPIRE): _S.FAILED,
    (_S.NEW, _In.CLOSE): _S.CLOSED,
    (_S.CHECKING, _In.CHECK): _S.CHECKING,
    (_S.CHECKING, _In.NOMINATE): _S.CONNECTED,
    (_S.CHECKING, _In.EXPIRE): _S.FAILED,
    (_S.CHECKING, _In.CLOSE): _S.CLOSED,
    (_S.CONNECTED, _In.CHECK): _S.CONNECTED,
    (_S.CONNECTED, _In.CONSENT): _S.CONNECTED,
    (_S.CONNECTED, _In.NOMINATE): _S.CONNECTED,
    (_S.CONNECTED, _In.SILENCE): _S.DISCONNECTED,
    (_S.CONNECTED, _In.EXPIRE): _S.FAILED,
    (_S.CONNECTED, _In.CLOSE): _S.CLOSED,
    (_S.DISCONNECTED, _In.CHECK): _S.DISCONNECTED,
    (_S.DISCONNECTED, _In.CONSENT): _S.CONNECTED,
    (_S.DISCONNECTED, _In.NOMINATE): _S.CONNECTED,
    (_S.DISCONNECTED, _In.EXPIRE): _S.FAILED,
    (_S.DISCONNECTED, _In.CLOSE): _S.CLOSED,
    (_S.FAILED, _In.CLOSE): _S.CLOSED,
}

_ANSWERING = frozenset({IceState.NEW, IceState.CHECKING, IceState.CONNECTED, IceState.DISCONNECTED})

_REASONS = {400: "Bad Request", 401: "Unauthorized", 420: "Unknown Attribute", 487: "Role Conflict"}


class IceLiteAgent(Machine[IceState, _Input, IceEvent]):
    """The controlled, lite side of one ICE session (RFC 8445 sections 2.5, 6.1.1 and 7.3).

    ``receive_stun(data, addr, now)`` returns the response to send back to
    ``addr`` (or None when the datagram is to be dropped); events come from
    :meth:`next_event`; :meth:`get_timer` and :meth:`handle_timer` drive the
    consent and connect deadlines. ``counters`` counts checks answered, each
    error code sent and datagrams dropped, for the caller's metrics.
    """

    def __init__(
        self,
        local_ufrag: str,
        local_pwd: str,
        remote_ufrag: str | None = None,
        remote_pwd: str | None = None,
        *,
        now: float,
        consent_timeout: float = CONSENT_TIMEOUT,
        disconnect_timeout: float = DISCONNECT_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        rebind_quiet: float = REBIND_QUIET,
    ) -> None:
        super().__init__(TRANSITIONS, IceState.NEW, IceStateError, StateChanged)
        self.local_ufrag = local_ufrag
        self.local_pwd = local_pwd
        self._key = local_pwd.encode("utf-8")
        self.remote_ufrag = remote_ufrag
        self.remote_pwd = remote_pwd
        self.consent_timeout = consent_timeout
        self.disconnect_timeout = disconnect_timeout
        self.rebind_quiet = rebind_quiet
        self.selected: Address | None = None
        # Insertion-ordered set; the value says whether the current credentials
        # validated the address (False: only the previous ones, during a restart).
        self.validated: dict[Address, bool] = {}
        self.counters: Counter[str] = Counter()
        self._connect_timeout = connect_timeout
        self._connect_deadline = now + connect_timeout
        self._consent_at = now  # last consent refresh of the selected address
        # The generation before an ICE restart, answered until the restart
        # completes: (local ufrag, local key, remote ufrag).
        self._previous: tuple[str, bytes, str | None] | None = None

    @property
    def restarting(self) -> bool:
        """Whether an ICE restart waits for the peer's nomination under the new credentials."""
        return self._previous is not None

    @property
    def previous_ufrag(self) -> str | None:
        """Our local ufrag before the restart in progress, or None."""
        return None if self._previous is None else self._previous[0]

    def set_remote_credentials(self, ufrag: str, pwd: str) -> None:
        """Learn the peer's ufrag and password from its SDP (RFC 8839 section 5.4).

        Until then checks are still answered: the USERNAME's remote half cannot
        be checked yet, but integrity uses only our own password.
        """
        self.remote_ufrag = ufrag
        self.remote_pwd = pwd

    def restart(self, local_ufrag: str, local_pwd: str, now: float) -> None:
        """Start an ICE restart with new local credentials (RFC 8445 section 9, RFC 8839 5.4).

        The peer's new credentials come with its offer or answer
        (:meth:`set_remote_credentials`). The state, the selected address
        and consent carry on: media keeps flowing on the old path until the
        peer nominates one under the new credentials; until then checks
        under the previous credentials are answered too. A restart before
        the previous one completed replaces it. Refused in a terminal state.
        """
        if self.state not in _ANSWERING:
            raise IceStateError(f"cannot restart ICE when {self.state.value}")
        if local_ufrag in (self.local_ufrag, self.previous_ufrag):
            raise IceStateError("an ICE restart needs a new ufrag")
        if self._previous is None:
            self._previous = (self.local_ufrag, self._key, self.remote_ufrag)
        self.local_ufrag = local_ufrag
        self.local_pwd = local_pwd
        self._key = local_pwd.encode("utf-8")
        self.remote_ufrag = None
        self.remote_pwd = None
        # Every address must prove itself again under the new credentials.
        for address in self.validated:
            self.validated[address] = False
        if self.state in (IceState.NEW, IceState.CHECKING):
            self._connect_deadline = now + self._connect_timeout
        self.counters["restarts"] += 1

    def rebind(self, addr: Address, now: float) -> bool:
        """Media that authenticated under this peer's keys came from ``addr``.

        The caller checked the packet's SRTP or SRTCP authentication tag, so
        the peer (and nobody else) sent it: a NAT gave its path a new
        address. While CONNECTED or DISCONNECTED, ``addr`` is validated and
        selected at once. Consent is not refreshed (RFC 7675 section 5.1
        wants a check for that; the peer's next one does it). Returns
        whether the selected address moved.
        """
        address = (addr[0], addr[1])
        if self.state not in (IceState.CONNECTED, IceState.DISCONNECTED):
            return False
        if address == self.selected:
            return False
        self._validate(address, current=True)
        self.selected = address
        self._events.append(SelectedAddress(address))
        self.counters["rebinds_media"] += 1
        return True

    # -- input -----------------------------------------------------------------

    def receive_stun(self, data: bytes, addr: Address, now: float) -> bytes | None:
        """Answer one STUN datagram from ``addr`` (RFC 8445 section 7.3, RFC 8489 section 6.3).

        A valid Binding request gets a success response with XOR-MAPPED-ADDRESS,
        MESSAGE-INTEGRITY (our password) and FINGERPRINT. Refusals follow RFC
        8445 section 7.3.1 and RFC 8489 section 9.1.3: 400 for a request without
        USERNAME or MESSAGE-INTEGRITY or with a malformed attribute, 401 (not
        signed: we cannot know the key) for a wrong ufrag or integrity, 420 for
        an unknown comprehension-required attribute, 487 for a role conflict.
        Anything that is not a request (indications, responses, garbage, a bad
        FINGERPRINT, a terminal state) returns None and is counted.
        """
        if self.state not in _ANSWERING:
            self.counters["dropped_state"] += 1
            return None
        try:
            msg = stun.StunMessage.parse(data)
        except StunParseError:
            self.counters["dropped_malformed"] += 1
            return None
        if msg.method != stun.BINDING or msg.cls != stun.REQUEST:
            # Binding indications are keepalives (RFC 8445 section 11); nothing to answer.
            self.counters["dropped_not_request"] += 1
            return None
        # RFC 8489 section 14.7: a wrong FINGERPRINT means "not STUN": drop.
        fingerprint = stun.check_fingerprint(data)
        if fingerprint is False:
            self.counters["dropped_fingerprint"] += 1
            return None
        key = self._key
        try:
            key = self._check(msg, data, fingerprint)
        except IceCheckError as exc:
            self.counters[f"error_{exc.code}"] += 1
            # 420 and 487 come after authentication: those responses can be signed.
            return self._error(msg, exc, key, signed=exc.code in (420, 487))
        self.counters["checks"] += 1
        self._accept(msg, addr, now, current=key is self._key)
        response = stun.StunMessage(stun.BINDING, stun.SUCCESS, msg.transaction_id)
        response.set(stun.XOR_MAPPED_ADDRESS, (addr[0], addr[1]))
        return bytes(response.add_integrity(key).add_fingerprint())

    def _check(self, msg: stun.StunMessage, data: bytes, fingerprint: bool | None) -> bytes:
        """Authenticate a check; returns the key (password) of the generation
        it was made under: the current one, or during a restart the previous."""
        raw_username = msg.get(stun.USERNAME)
        if raw_username is None or msg.get(stun.MESSAGE_INTEGRITY) is None:
            raise IceCheckError(400, "USERNAME and MESSAGE-INTEGRITY are required")
        if fingerprint is None:
            # RFC 8445 section 7.3: ICE requests always carry FINGERPRINT.
            raise IceCheckError(400, "FINGERPRINT is required")
        try:
            username = stun.unpack_string(raw_username)
            # Decoding validates the lengths of the ICE attributes.
            msg.decoded(stun.PRIORITY)
            msg.decoded(stun.USE_CANDIDATE)
            msg.decoded(stun.ICE_CONTROLLING)
            controlled = msg.decoded(stun.ICE_CONTROLLED)
        except StunParseError as exc:
            raise IceCheckError(400, str(exc)) from exc
        local, sep, remote = username.partition(":")
        if not sep:
            raise IceCheckError(400, "USERNAME is not local:remote")
        if local == self.local_ufrag:
            key, remote_ufrag = self._key, self.remote_ufrag
        elif self._previous is not None and local == self._previous[0]:
            # RFC 8445 section 9: until the restart completes, the old
            # generation's checks keep the old path's consent alive.
            _, key, remote_ufrag = self._previous
        else:
            raise IceCheckError(401, "unknown USERNAME")
        if remote_ufrag is not None and remote != remote_ufrag:
            raise IceCheckError(401, "unknown USERNAME")
        if not stun.check_integrity(data, key):
            raise IceCheckError(401, "MESSAGE-INTEGRITY does not match")
        # RFC 8489 section 6.3.1, after authentication as turn/core.py does it.
        unknown = tuple(
            t for t in dict.fromkeys(msg.types()) if t < 0x8000 and t not in stun.KNOWN_TYPES
        )
        if unknown:
            raise _UnknownAttributes(unknown)
        if controlled is not None:
            # RFC 8445 section 7.3.1.1: both sides think they are controlled.
            # The RFC has the agent with the larger tie-breaker keep its role and
            # answer 487; a lite agent can only ever be controlled (section
            # 6.1.1), so it acts as if its tie-breaker were the largest possible:
            # always 487, and the full agent switches to controlling.
            raise IceCheckError(487, "a lite agent is always controlled")
        return key

    def _validate(self, address: Address, *, current: bool) -> None:
        known = self.validated.get(address)
        if known is None:
            if len(self.validated) >= MAX_VALIDATED:
                oldest = next(iter(self.validated))
                del self.validated[oldest]
                self._events.append(ForgottenAddress(oldest))
            self.validated[address] = current
            self._events.append(ValidatedAddress(address))
        elif current and not known:
            self.validated[address] = True

    def _accept(self, msg: stun.StunMessage, addr: Address, now: float, *, current: bool) -> None:
        address = (addr[0], addr[1])
        self._validate(address, current=current)
        if self.state is IceState.NEW:
            self._transition(_Input.CHECK, "first valid check")
        if msg.get(stun.USE_CANDIDATE) is not None and (current or self._previous is None):
            # RFC 8445 section 7.3.1.5: a lite agent selects the nominated pair at once.
            self._consent_at = now
            self._transition(_Input.NOMINATE, "USE-CANDIDATE")
            if address != self.selected:
                self.selected = address
                self._events.append(SelectedAddress(address))
            if current and self._previous is not None:
                self._complete_restart()
        elif address == self.selected:
            self._consent_at = now
            self._transition(_Input.CONSENT, "consent check")
        elif (
            self.state in (IceState.CONNECTED, IceState.DISCONNECTED)
            and now - self._consent_at >= self.rebind_quiet
        ):
            # A NAT rebinding (or a path the peer fell back to): the selected
            # address went quiet and this one proved it knows our password.
            self.selected = address
            self._events.append(SelectedAddress(address))
            self.counters["rebinds_check"] += 1
            self._consent_at = now
            self._transition(_Input.CONSENT, "check from a new address")
        else:
            self._transition(_Input.CHECK, "check")

    def _complete_restart(self) -> None:
        """The peer nominated a pair under the new credentials (RFC 8445 section 9.3.1.4
        for the lite side): the old generation, and the addresses only it validated, go."""
        assert self._previous is not None
        ufrag = self._previous[0]
        self._previous = None
        for address, current in list(self.validated.items()):
            if not current:
                del self.validated[address]
                self._events.append(ForgottenAddress(address))
        self._events.append(CredentialsRetired(ufrag))
        self.counters["restarts_completed"] += 1

    def _error(
        self, msg: stun.StunMessage, exc: IceCheckError, key: bytes, *, signed: bool
    ) -> bytes:
        response = stun.StunMessage(stun.BINDING, stun.ERROR, msg.transaction_id)
        response.set(stun.ERROR_CODE, (exc.code, _REASONS[exc.code]))
        if isinstance(exc, _UnknownAttributes):
            response.set(stun.UNKNOWN_ATTRIBUTES, exc.unknown)
        if signed:
            # RFC 8489 section 9.1.3: errors to an authenticated request are signed.
            response.add_integrity(key)
        return bytes(response.add_fingerprint())

    # -- timers ----------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` wants to be called: the next connect or consent deadline."""
        if self.state in (IceState.NEW, IceState.CHECKING):
            return self._connect_deadline
        if self.state is IceState.CONNECTED:
            return self._consent_at + min(self.disconnect_timeout, self.consent_timeout)
        if self.state is IceState.DISCONNECTED:
            return self._consent_at + self.consent_timeout
        return None

    def handle_timer(self, now: float) -> None:
        """Apply the deadline that passed: connect, silence or consent expiry (RFC 7675 5.1)."""
        if self.state in (IceState.NEW, IceState.CHECKING):
            if now >= self._connect_deadline:
                self._transition(_Input.EXPIRE, "no nomination before the connect timeout")
            return
        if self.state not in (IceState.CONNECTED, IceState.DISCONNECTED):
            return
        silent = now - self._consent_at
        if silent >= self.consent_timeout:
            self._transition(_Input.EXPIRE, "consent expired")
        elif silent >= self.disconnect_timeout and self.state is IceState.CONNECTED:
            self._transition(_Input.SILENCE, "no consent check")

    def close(self) -> None:
        """Stop answering (the peer connection is gone)."""
        if self.state is not IceState.CLOSED:
            self._transition(_Input.CLOSE, "closed")


class _UnknownAttributes(IceCheckError):
    def __init__(self, unknown: tuple[int, ...]) -> None:
        super().__init__(420, "unknown comprehension-required attributes")
        self.unknown = unknown
