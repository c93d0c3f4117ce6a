"""The bridge's user agent for calls from trunks: who may call, the answer,
the dialog, and the requests inside it (RFC 3261 sections 12 to 15).

A sans-I/O core above the transaction layer (:mod:`sip.wire.transactions`):
the endpoint hands it the layer's events (:meth:`UserAgent.receive`) and
the time; it answers through :attr:`UserAgent.out` (responses to send,
requests to send, raw datagrams for its own 2xx retransmissions) and tells
the call's owner what happened through :meth:`UserAgent.next_event`:

* **Who may call.** A trunk is a clinic's SIP trunk or PBX, known by the
  addresses it sends from, or by digest credentials (RFC 3261 section 22,
  :mod:`sip.wire.digest`), or both (:class:`Trunk`). An INVITE from no
  trunk's addresses, or with wrong credentials, gets 403 and is counted
  (``unauthenticated``): the bridge is no open relay and no way to ring a
  visit from the internet. A digest trunk's INVITE without credentials is
  challenged with 401. A trunk at its ``max_calls`` gets 503 with
  Retry-After.
* **The answer.** An INVITE the bridge takes is answered in two steps, as
  the media needs a socket first: :class:`MediaWanted` asks the owner for
  a media port (and an SDES key), :meth:`UserAgent.media_ready` then
  answers 200 with the SDP (:mod:`sip.wire.sdp`); an offer that cannot be
  agreed gets 488. The 200 is repeated on T1 doubling to T2 until its ACK
  (section 13.3.1.4); none within 64*T1 ends the call with a BYE.
* **The dialog.** Call-ID and both tags (section 12). In it: ACK confirms
  (:class:`CallAnswered` with the agreed media), a re-INVITE changes the
  media (hold and resume: :class:`MediaChanged`), INFO carries digits
  (:class:`Digit`, RFC 2976 with ``application/dtmf-relay`` or
  ``application/dtmf``), BYE ends it (:class:`CallEnded`). CANCEL before the
  answer ends it with 487 (section 9.2). A request for a dialog the bridge
  does not know gets 481.
* **Ending it ourselves.** :meth:`UserAgent.hang_up` sends BYE to the
  far end's Contact with the next CSeq (section 15.1.1).
* **Placing calls** (dial-out). :meth:`UserAgent.dial` sends our INVITE
  with our offer through a trunk; a 180 or 183 is :class:`Ringing`, a 2xx
  is ACKed (section 13.2.2.4) and :class:`CallAnswered` with the agreed
  media, a 3xx to 6xx (ACKed by its transaction) or no final answer is
  :class:`DialFailed` (busy, no answer, declined, failed). Unanswered at
  its ring timeout it is cancelled (CANCEL, section 9.1; the 487 that
  follows is "no answer"). An answered call is a dialog like any other.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

from sip.audio.dtmf import parse_info
from sip.calls import placing
from sip.calls.placing import ALLOW
from sip.errors import DtmfParseError, SdpOfferError, SipParseError
from sip.wire.digest import Nonces, challenge, parse_credentials, verify
from sip.wire.fields import CSeq, NameAddr, parse_via
from sip.wire.headers import Headers
from sip.wire.message import Request, Response, response_to
from sip.wire.sdp import PhoneMedia, answer_offer, make_offer, read_answer
from sip.wire.transactions import (
    T1,
    T2,
    Answered,
    ClientTimedOut,
    Event,
    NewRequest,
    ResponseReceived,
)

__all__ = [
    "ALLOW",
    "CallAnswered",
    "CallEnded",
    "DialFailed",
    "Digit",
    "MediaChanged",
    "MediaWanted",
    "Ringing",
    "Trunk",
    "UserAgent",
]

Address = tuple[str, int]

ACCEPT = "application/sdp, application/dtmf-relay, application/dtmf"
#: Seconds a trunk at its call limit is told to wait (RFC 3261 section 20.33).
RETRY_AFTER = 30


@dataclass(frozen=True)
class Trunk:
    """A clinic's SIP trunk or PBX: the networks it sends from (empty: any),
    the digest username and password its INVITEs must prove (None: none, the
    networks alone admit it), the language of its callers (None: ask with the
    three-language menu), how many calls it may hold at once."""

    name: str
    networks: Sequence[str]
    language: str | None = None
    max_calls: int = 30
    username: str | None = None
    password: str | None = None
    #: Where the bridge sends the calls it places through this trunk
    #: (dial-out), and the numbers besides a visit's patient it may call.
    outbound: Address | None = None
    dial_allow: tuple[str, ...] = ()
    _nets: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(
        init=False, repr=False, compare=False, default=()
    )

    def __post_init__(self) -> None:
        # Parsed once: admits() runs for every INVITE.
        nets = tuple(ipaddress.ip_network(n, strict=False) for n in self.networks)
        object.__setattr__(self, "_nets", nets)

    def admits(self, host: str) -> bool:
        nets = self._nets
        if not nets:
            return self.username is not None  # digest alone, from anywhere
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in net for net in nets)


# -- what the owner of the calls is told ---------------------------------------------


@dataclass(frozen=True, slots=True)
class MediaWanted:
    """A call the bridge will answer: open its media and call
    :meth:`UserAgent.media_ready` (or :meth:`UserAgent.reject`)."""

    call_id: str
    trunk: Trunk
    caller: str
    srtp: bool


@dataclass(frozen=True, slots=True)
class CallAnswered:
    """The caller's ACK came: the call is up, with this media."""

    call_id: str
    media: PhoneMedia


@dataclass(frozen=True, slots=True)
class MediaChanged:
    """A re-INVITE changed the call's media (hold, resume, a new address)."""

    call_id: str
    media: PhoneMedia


@dataclass(frozen=True, slots=True)
class Digit:
    """A key the caller pressed, sent as SIP INFO."""

    call_id: str
    key: str


@dataclass(frozen=True, slots=True)
class CallEnded:
    """The call is over: ``reason`` is ``hangup`` (the caller's BYE),
    ``cancelled``, ``no ack``, ``ended`` (our BYE) or ``timeout`` (no
    answer to our BYE)."""

    call_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Ringing:
    """A call the bridge placed rings (the first 180 or 183)."""

    call_id: str


@dataclass(frozen=True, slots=True)
class DialFailed:
    """A call the bridge placed was not answered: ``reason`` is ``busy``
    (486, 600), ``no answer`` (408, 480, 487 after our CANCEL at the ring
    timeout, or no final answer at all), ``declined`` (603) or ``failed``
    (anything else, or an answer whose media cannot be agreed); ``status``
    the final response's (408 for none)."""

    call_id: str
    reason: str
    status: int


CallEvent = MediaWanted | CallAnswered | MediaChanged | Digit | CallEnded | Ringing | DialFailed

#: Final statuses of a placed call, by what they mean to the doctor.
_DIAL_OUTCOMES = {486: "busy", 600: "busy", 408: "no answer", 480: "no answer", 487: "no answer"}
_DIAL_OUTCOMES[603] = "declined"


@dataclass(eq=False)
class Dialog:
    """One call's dialog state (RFC 3261 section 12.1.1)."""

    call_id: str
    trunk: Trunk
    invite: Request
    addr: Address
    reliable: bool
    local_tag: str
    #: Where our requests go: the far end's Contact (its remote target).
    remote_target: str
    local_seq: int = 0
    media: PhoneMedia | None = None
    answer: Response | None = None
    #: The 2xx repeated until its ACK: when next, and how long between.
    resend_at: float | None = None
    interval: float = T1
    give_up_at: float | None = None
    confirmed: bool = False
    ending: bool = False
    session_version: int = 1
    port: int = 0
    host: str = ""
    key: bytes | None = None
    #: A call the bridge placed (dial-out): our INVITE, the far end's tag
    #: once it answered, when an unanswered one is cancelled, whether it rang.
    outgoing: bool = False
    remote_tag: str = ""
    ring_until: float | None = None
    rang: bool = False
    cancelled: bool = False


@dataclass
class Out:
    """What the agent asks its endpoint to send."""

    responses: list[tuple[Request, Response]] = field(default_factory=list)
    requests: list[tuple[Request, Address, bool]] = field(default_factory=list)
    raw: list[tuple[bytes, Address, bool]] = field(default_factory=list)


class UserAgent:
    """Calls from trunks (RFC 3261 sections 12 to 15); see the module docstring.

    ``contact``: the bridge's own SIP URI, for Contact (``sip:bridge@host:port``).
    """

    def __init__(self, trunks: Sequence[Trunk], contact: str, *, realm: str = "wadud") -> None:
        self.trunks = list(trunks)
        self.contact = contact
        self.out = Out()
        self.dialogs: dict[str, Dialog] = {}
        #: INVITEs refused for coming from no trunk (or with wrong digest
        #: credentials), and for a trunk at its limit; INVITEs challenged for
        #: their credentials (401, the usual first answer to a digest trunk).
        self.unauthenticated = 0
        self.over_limit = 0
        self.challenged = 0
        #: The digest realm the bridge's challenges name, and their nonces.
        self.realm = realm
        self.nonces = Nonces()
        self._events: list[CallEvent] = []

    # -- input -------------------------------------------------------------------

    def receive(self, event: Event, now: float) -> None:
        if isinstance(event, NewRequest):
            self._request(event.request, event.addr, now)
        elif isinstance(event, Answered):
            pass  # the 2xx this agent sent; it repeats it itself
        elif isinstance(event, ResponseReceived):
            self._response(event.request, event.response)
        elif isinstance(event, ClientTimedOut):
            self._timed_out(event.request)

    def media_ready(
        self, call_id: str, host: str, port: int, key: bytes | None, now: float
    ) -> None:
        """The call's media socket is open at ``host``/``port``: answer, and
        repeat the 200 until its ACK (over UDP; over TCP only the give-up
        timer runs)."""
        dialog = self.dialogs.get(call_id)
        if dialog is None or dialog.answer is not None:
            return
        dialog.host, dialog.port, dialog.key = host, port, key
        self._answer_offer(dialog, dialog.invite, reinvite=False)
        if dialog.answer is not None:
            dialog.interval = T1
            dialog.resend_at = None if dialog.reliable else now + T1
            dialog.give_up_at = now + 64 * T1

    def reject(self, call_id: str, status: int) -> None:
        """Refuse a call the owner cannot take (no media port: 503)."""
        dialog = self.dialogs.pop(call_id, None)
        if dialog is not None and dialog.answer is None:
            self._respond(dialog.invite, status)

    def hang_up(self, call_id: str, now: float) -> None:
        """End the call with BYE (section 15.1.1)."""
        dialog = self.dialogs.get(call_id)
        if dialog is None or dialog.ending:
            return
        dialog.ending = True
        dialog.resend_at = None
        if not dialog.confirmed and dialog.answer is None:
            self._respond(dialog.invite, 480)
            self._end(dialog, "ended")
            return
        self.out.requests.append((self._bye(dialog), dialog.addr, dialog.reliable))

    def dial(
        self,
        trunk: Trunk,
        target: str,
        addr: Address,
        *,
        host: str,
        port: int,
        key: bytes | None,
        now: float,
        ring_timeout: float,
        reliable: bool = False,
    ) -> str:
        """Place a call to ``target`` (a SIP URI at the trunk) through the
        trunk at ``addr``, offering our media at ``host``/``port`` (SDES with
        ``key``); unanswered after ``ring_timeout`` seconds it is cancelled.
        Returns its Call-ID; :class:`Ringing`, then :class:`CallAnswered` or
        :class:`DialFailed` follow, and :class:`CallEnded` at its end."""
        call_id = f"{secrets.token_hex(12)}@wadud"
        local_tag = secrets.token_hex(6)
        offer = make_offer(host, port, session_id=secrets.randbelow(2**31), key=key)
        invite = placing.invite(self.contact, target, call_id, local_tag, offer)
        self.dialogs[call_id] = Dialog(
            call_id=call_id,
            trunk=trunk,
            invite=invite,
            addr=addr,
            reliable=reliable,
            local_tag=local_tag,
            remote_target=target,
            local_seq=1,
            host=host,
            port=port,
            key=key,
            outgoing=True,
            ring_until=now + ring_timeout,
        )
        # No Via: the endpoint writes ours, into this same request, which a
        # CANCEL then copies (section 9.1).
        self.out.requests.append((invite, addr, reliable))
        return call_id

    # -- output ------------------------------------------------------------------

    def next_event(self) -> CallEvent | None:
        return self._events.pop(0) if self._events else None

    def get_timer(self) -> float | None:
        due = [
            t
            for d in self.dialogs.values()
            for t in (d.resend_at, d.give_up_at, None if d.cancelled else d.ring_until)
            if t is not None
        ]
        return min(due, default=None)

    def handle_timer(self, now: float) -> None:
        for dialog in list(self.dialogs.values()):
            if (
                dialog.outgoing
                and not dialog.confirmed
                and not dialog.cancelled
                and dialog.ring_until is not None
                and now >= dialog.ring_until
            ):
                self._cancel(dialog)
                continue
            if dialog.give_up_at is not None and now >= dialog.give_up_at:
                # No ACK to our 2xx (section 13.3.1.4): the call is over.
                dialog.give_up_at = dialog.resend_at = None
                self.hang_up(dialog.call_id, now)
                self._end(dialog, "no ack")
            elif dialog.resend_at is not None and now >= dialog.resend_at and dialog.answer:
                self.out.raw.append((bytes(dialog.answer), dialog.addr, dialog.reliable))
                dialog.interval = min(dialog.interval * 2, T2)
                dialog.resend_at = now + dialog.interval

    # -- requests ----------------------------------------------------------------

    def _request(self, request: Request, addr: Address, now: float) -> None:
        method = request.method
        if method == "OPTIONS":
            response = response_to(request, 200)
            response.headers.add("Allow", ALLOW)
            response.headers.add("Accept", ACCEPT)
            self.out.responses.append((request, response))
            return
        call_id = request.headers.get("Call-ID") or ""
        to = NameAddr.parse(request.headers.get("To") or "")
        dialog = self.dialogs.get(call_id)
        in_dialog = to.tag is not None
        if dialog is not None and in_dialog and to.tag != dialog.local_tag:
            dialog = None
        if method == "INVITE" and not in_dialog:
            if dialog is None:
                self._new_call(request, addr, now)
            return  # a retransmission the transaction layer missed: nothing new
        if dialog is None:
            if method != "ACK":
                self._respond(request, 481)
            return
        if method == "ACK":
            if not dialog.confirmed and dialog.media is not None:
                dialog.confirmed = True
                dialog.resend_at = dialog.give_up_at = None
                self._events.append(CallAnswered(call_id, dialog.media))
            elif dialog.confirmed:
                dialog.resend_at = dialog.give_up_at = None
        elif method == "BYE":
            self._respond(request, 200)
            self._end(dialog, "hangup")
        elif method == "CANCEL":
            self._respond(request, 200)
            if dialog.answer is None:
                self._respond(dialog.invite, 487)
                self._end(dialog, "cancelled")
        elif method == "INVITE":
            self._reinvite(dialog, request)
        elif method == "INFO":
            self._info(dialog, request)
        else:
            response = response_to(request, 405)
            response.headers.add("Allow", ALLOW)
            self.out.responses.append((request, response))

    def _new_call(self, request: Request, addr: Address, now: float) -> None:
        admitted = [t for t in self.trunks if t.admits(addr[0])]
        trunk = next((t for t in admitted if t.username is None), None)
        if trunk is None and admitted:
            trunk = self._authenticated(request, admitted, now)
            if trunk is None:
                return  # challenged (401) or refused (403)
        if trunk is None:
            self.unauthenticated += 1
            self._respond(request, 403)
            return
        calls = sum(1 for d in self.dialogs.values() if d.trunk is trunk)
        if calls >= trunk.max_calls:
            self.over_limit += 1
            response = response_to(request, 503)
            response.headers.add("Retry-After", str(RETRY_AFTER))
            self.out.responses.append((request, response))
            return
        try:
            contact = NameAddr.parse(request.headers.get("Contact") or "")
            caller = NameAddr.parse(request.headers.get("From") or "")
        except SipParseError:
            self._respond(request, 400, "Bad Contact or From")
            return
        top = parse_via(request.headers.get("Via") or "")[0]
        call_id = request.headers.get("Call-ID") or ""
        dialog = Dialog(
            call_id=call_id,
            trunk=trunk,
            invite=request,
            addr=addr,
            reliable=top.transport.upper() == "TCP",
            local_tag=secrets.token_hex(6),
            remote_target=str(contact.uri),
        )
        self.dialogs[call_id] = dialog
        srtp = b"RTP/SAVP" in request.body
        self._events.append(MediaWanted(call_id, trunk, caller.uri.user or "", srtp))

    def _authenticated(self, request: Request, trunks: list[Trunk], now: float) -> Trunk | None:
        """The trunk whose digest credentials ``request`` proves (RFC 3261
        section 22.4); else None, having answered 401 with a challenge (no
        credentials yet, or a stale nonce) or 403 (wrong ones, counted)."""
        header = request.headers.get("Authorization")
        if header is None:
            self.challenged += 1
            self._challenge(request, now, stale=False)
            return None
        try:
            credentials = parse_credentials(header)
        except SipParseError:
            credentials = None
        trunk = next(
            (t for t in trunks if credentials is not None and t.username == credentials.username),
            None,
        )
        if credentials is None or trunk is None or credentials.realm != self.realm:
            self.unauthenticated += 1
            self._respond(request, 403)
            return None
        freshness = self.nonces.check(credentials.nonce, now)
        if freshness == "bad" or not verify(credentials, request.method, trunk.password or ""):
            self.unauthenticated += 1
            self._respond(request, 403)
            return None
        if freshness == "stale":
            self.challenged += 1
            self._challenge(request, now, stale=True)
            return None
        return trunk

    def _challenge(self, request: Request, now: float, *, stale: bool) -> None:
        response = response_to(request, 401)
        response.headers.add(
            "WWW-Authenticate", challenge(self.realm, self.nonces.issue(now), stale=stale)
        )
        self.out.responses.append((request, response))

    def _answer_offer(self, dialog: Dialog, request: Request, *, reinvite: bool) -> None:
        try:
            media, sdp = answer_offer(
                request.body.decode("utf-8", "replace"),
                dialog.host,
                dialog.port,
                session_id=int.from_bytes(dialog.local_tag.encode()[:6], "big"),
                key=dialog.key,
                version=dialog.session_version,
            )
        except SdpOfferError as exc:
            self._respond(request, 488, str(exc)[:60])
            if not reinvite:
                self._end(dialog, "no common media")
            return
        dialog.session_version += 1
        response = response_to(request, 200, to_tag=dialog.local_tag)
        response.headers.add("Contact", f"<{self.contact}>")
        response.headers.add("Allow", ALLOW)
        response.headers.add("Content-Type", "application/sdp")
        response = Response(response.status, response.reason, response.headers, sdp.encode())
        self.out.responses.append((request, response))
        if reinvite:
            dialog.media = media
            self._events.append(MediaChanged(dialog.call_id, media))
            return
        dialog.media, dialog.answer = media, response

    def _reinvite(self, dialog: Dialog, request: Request) -> None:
        if not dialog.confirmed:
            self._respond(request, 491)  # section 14.2: one offer at a time
            return
        if not request.body:
            self._respond(request, 488, "an offer is needed")
            return
        self._answer_offer(dialog, request, reinvite=True)

    def _info(self, dialog: Dialog, request: Request) -> None:
        kind = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if kind not in ("application/dtmf-relay", "application/dtmf"):
            self._respond(request, 415)
            return
        try:
            key = parse_info(kind, request.body)
        except DtmfParseError:
            self._respond(request, 400, "Bad DTMF body")
            return
        self._respond(request, 200)
        self._events.append(Digit(dialog.call_id, key))

    # -- responses to our requests ----------------------------------------------------

    def _response(self, request: Request, response: Response) -> None:
        if request.method == "INVITE":
            dialog = self.dialogs.get(request.headers.get("Call-ID") or "")
            if dialog is not None and dialog.outgoing and dialog.invite is request:
                self._dial_response(dialog, response)
            return
        if request.method == "BYE" and response.status >= 200:
            dialog = self.dialogs.get(request.headers.get("Call-ID") or "")
            if dialog is not None:
                self._end(dialog, "ended")

    def _timed_out(self, request: Request) -> None:
        if request.method == "INVITE":
            dialog = self.dialogs.get(request.headers.get("Call-ID") or "")
            if dialog is not None and dialog.outgoing and not dialog.confirmed:
                # No final answer at all (timer B, section 17.1.1.2).
                self.dialogs.pop(dialog.call_id, None)
                self._events.append(DialFailed(dialog.call_id, "no answer", 408))
            return
        if request.method == "BYE":
            dialog = self.dialogs.get(request.headers.get("Call-ID") or "")
            if dialog is not None:
                self._end(dialog, "timeout")

    # -- calls we place ----------------------------------------------------------------

    def _dial_response(self, dialog: Dialog, response: Response) -> None:
        status = response.status
        if status < 200:
            if status in (180, 183) and not dialog.rang:
                dialog.rang = True
                self._events.append(Ringing(dialog.call_id))
            return
        if status >= 300:
            # The transaction ACKs it (section 17.1.1.3); the call never was.
            self.dialogs.pop(dialog.call_id, None)
            reason = _DIAL_OUTCOMES.get(status, "failed")
            self._events.append(DialFailed(dialog.call_id, reason, status))
            return
        if dialog.confirmed:
            return  # a 2xx again: our ACK went; the dialog's own retransmits are rare
        to = NameAddr.parse(response.headers.get("To") or "")
        dialog.remote_tag = to.tag or ""
        contact = response.headers.get("Contact")
        if contact:
            dialog.remote_target = str(NameAddr.parse(contact).uri)
        dialog.confirmed = True
        dialog.ring_until = None
        self.out.raw.append((bytes(self._ack(dialog)), dialog.addr, dialog.reliable))
        try:
            dialog.media = read_answer(response.body.decode("utf-8", "replace"), key=dialog.key)
        except SdpOfferError:
            # Answered with media we did not offer: there is no call to have.
            self._events.append(DialFailed(dialog.call_id, "failed", status))
            dialog.ending = True
            self.out.requests.append((self._bye(dialog), dialog.addr, dialog.reliable))
            return
        self._events.append(CallAnswered(dialog.call_id, dialog.media))

    def _ack(self, dialog: Dialog) -> Request:
        return placing.ack(
            dialog.invite, self._remote(dialog), dialog.remote_target, self.contact, dialog.reliable
        )

    def _cancel(self, dialog: Dialog) -> None:
        dialog.cancelled = True
        cancel = placing.cancel(dialog.invite)
        self.out.requests.append((cancel, dialog.addr, dialog.reliable))

    def _remote(self, dialog: Dialog) -> str:
        """The far end's address with its tag, as our requests' To."""
        return str(
            NameAddr.parse(dialog.invite.headers.get("To") or "").with_tag(dialog.remote_tag)
        )

    # -- helpers -------------------------------------------------------------------

    def _respond(self, request: Request, status: int, reason: str | None = None) -> None:
        self.out.responses.append((request, response_to(request, status, reason)))

    def _bye(self, dialog: Dialog) -> Request:
        """BYE within the dialog (sections 12.2.1.1, 15.1.1): From is our side
        (the INVITE's To with our tag), To the caller's From, sent to the
        caller's Contact."""
        invite = dialog.invite.headers
        dialog.local_seq = max(dialog.local_seq, 1) + 1
        # No Via: the endpoint that sends it writes its own (section 18.1.1),
        # with the sent-by it listens on and a fresh branch.
        headers = Headers()
        headers.add("Max-Forwards", "70")
        if dialog.outgoing:
            headers.add("From", invite.get("From") or "")
            headers.add("To", self._remote(dialog))
        else:
            to = NameAddr.parse(invite.get("To") or "").with_tag(dialog.local_tag)
            headers.add("From", str(to))
            headers.add("To", invite.get("From") or "")
        headers.add("Call-ID", dialog.call_id)
        headers.add("CSeq", str(CSeq(dialog.local_seq, "BYE")))
        return Request("BYE", dialog.remote_target, headers)

    def _end(self, dialog: Dialog, reason: str) -> None:
        if self.dialogs.pop(dialog.call_id, None) is not None:
            self._events.append(CallEnded(dialog.call_id, reason))
