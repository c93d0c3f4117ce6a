"""SIP transactions (RFC 3261 section 17): retransmissions, their timers,
and matching what arrives to what was sent.

The phone bridge is a user agent on both sides: it answers calls from a
trunk (server transactions: an INVITE, and BYE, INFO, OPTIONS, CANCEL) and
places them for dial-out (client transactions). Over UDP every request and
final response is retransmitted on timers until the other side shows it
arrived; over TCP nothing is (section 17.1.1.2, 17.2.1), but the timeouts
still run. A sans-I/O core as rtc's: :meth:`Transactions.receive` takes a
parsed message, where it came from and ``now``; :meth:`Transactions.respond`
and :meth:`Transactions.request` take what the user agent sends;
:meth:`Transactions.datagrams_to_send`, :meth:`Transactions.get_timer` and
:meth:`Transactions.handle_timer` give back what to send and when to wake.

Each kind of transaction is one table of ``(state, input) -> state``
(figures 5 to 8 of the RFC), as h11 keeps a connection's:

* **INVITE server** (17.2.1, as RFC 6026 section 7.1 amends it):
  ``proceeding`` until the user agent answers; a 2xx makes it ``accepted``
  for timer L (64*T1), in which a retransmitted INVITE is absorbed, not
  answered (the user agent itself repeats a 2xx until its ACK, section
  13.3.1.4: :class:`sip.wire.transactions.Answered`), so no 100 Trying
  follows a 200 OK (a strict trunk aborts the call on it); a 3xx
  to 6xx is ``completed``, repeated on timer G (T1 doubling to T2) over
  UDP until the ACK (``confirmed``) or timer H (64*T1) gives up. A
  retransmitted INVITE gets the last response again. A 100 Trying goes out
  at once, so a trunk stops retransmitting while the bridge looks a PIN up.
* **non-INVITE server** (17.2.2): ``trying``, ``proceeding`` after a
  provisional response, ``completed`` after the final one, which answers
  retransmissions until timer J (64*T1 over UDP).
* **INVITE client** (17.1.1): ``calling``, retransmitted on timer A until a
  response or timer B (64*T1) times it out; a 3xx to 6xx is acknowledged
  by the transaction itself (17.1.1.3) and absorbed for timer D; a 2xx
  goes to the user agent, which acknowledges it in its dialog.
* **non-INVITE client** (17.1.2): ``trying``, retransmitted on timer E
  until a final response or timer F; ``completed`` absorbs retransmitted
  finals for timer K.

A request the layer matches to a live server transaction (17.2.3: the top
Via's branch and sent-by, and the method, ACK matching its INVITE) is a
retransmission and never reaches the user agent; a response is matched to
its client transaction by branch and CSeq method (17.1.3).
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field

from rtc.machine import move
from sip.errors import SipError, SipParseError
from sip.wire.message import CSeq, Headers, Request, Response, parse_via, response_to

__all__ = [
    "T1",
    "T2",
    "T4",
    "Answered",
    "ClientTimedOut",
    "Kind",
    "NewRequest",
    "ResponseReceived",
    "TransactionState",
    "Transactions",
    "new_branch",
]

#: RFC 3261 section 17.1.1.1 and table 4: the round-trip estimate, the
#: longest retransmission interval, and how long a message lingers.
T1 = 0.5
T2 = 4.0
T4 = 5.0
#: Seconds a server transaction waits for the user agent's final response
#: before it is forgotten: a guard against a user agent that never answers
#: (the peer gave up long before: timer B or F, 32 s).
UNANSWERED = 300.0
#: The magic cookie every RFC 3261 branch starts with (section 8.1.1.7).
COOKIE = "z9hG4bK"

Address = tuple[str, int]


class TransactionError(SipError):
    """The user agent asked for what its transaction cannot do (a response
    to a request it has no transaction for, a final response twice)."""


class Kind(enum.Enum):
    INVITE_SERVER = "invite server"
    SERVER = "server"
    INVITE_CLIENT = "invite client"
    CLIENT = "client"


class TransactionState(enum.Enum):
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    ACCEPTED = "accepted"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class Step(enum.Enum):
    """What moves a transaction."""

    PROVISIONAL = "provisional"
    SUCCESS = "2xx"
    FAILURE = "3xx-6xx"
    ACK = "ack"
    TIMEOUT = "timeout"


_S = TransactionState
TRANSITIONS: dict[Kind, dict[tuple[TransactionState, Step], TransactionState]] = {
    Kind.INVITE_SERVER: {
        (_S.PROCEEDING, Step.PROVISIONAL): _S.PROCEEDING,
        (_S.PROCEEDING, Step.SUCCESS): _S.ACCEPTED,
        (_S.PROCEEDING, Step.FAILURE): _S.COMPLETED,
        (_S.PROCEEDING, Step.TIMEOUT): _S.TERMINATED,  # never answered: UNANSWERED
        (_S.ACCEPTED, Step.TIMEOUT): _S.TERMINATED,  # timer L (RFC 6026)
        (_S.COMPLETED, Step.ACK): _S.CONFIRMED,
        (_S.COMPLETED, Step.TIMEOUT): _S.TERMINATED,  # timer H: no ACK came
        (_S.CONFIRMED, Step.ACK): _S.CONFIRMED,
        (_S.CONFIRMED, Step.TIMEOUT): _S.TERMINATED,  # timer I
    },
    Kind.SERVER: {
        (_S.TRYING, Step.PROVISIONAL): _S.PROCEEDING,
        (_S.PROCEEDING, Step.PROVISIONAL): _S.PROCEEDING,
        (_S.TRYING, Step.SUCCESS): _S.COMPLETED,
        (_S.TRYING, Step.FAILURE): _S.COMPLETED,
        (_S.PROCEEDING, Step.SUCCESS): _S.COMPLETED,
        (_S.PROCEEDING, Step.FAILURE): _S.COMPLETED,
        (_S.TRYING, Step.TIMEOUT): _S.TERMINATED,  # never answered: UNANSWERED
        (_S.PROCEEDING, Step.TIMEOUT): _S.TERMINATED,
        (_S.COMPLETED, Step.TIMEOUT): _S.TERMINATED,  # timer J
    },
    Kind.INVITE_CLIENT: {
        (_S.CALLING, Step.PROVISIONAL): _S.PROCEEDING,
        (_S.PROCEEDING, Step.PROVISIONAL): _S.PROCEEDING,
        (_S.CALLING, Step.SUCCESS): _S.TERMINATED,
        (_S.PROCEEDING, Step.SUCCESS): _S.TERMINATED,
        (_S.CALLING, Step.FAILURE): _S.COMPLETED,
        (_S.PROCEEDING, Step.FAILURE): _S.COMPLETED,
        (_S.COMPLETED, Step.FAILURE): _S.COMPLETED,  # a retransmitted final: ACK again
        (_S.CALLING, Step.TIMEOUT): _S.TERMINATED,  # timer B
        (_S.PROCEEDING, Step.TIMEOUT): _S.TERMINATED,  # the user agent's own limit
        (_S.COMPLETED, Step.TIMEOUT): _S.TERMINATED,  # timer D
    },
    Kind.CLIENT: {
        (_S.TRYING, Step.PROVISIONAL): _S.PROCEEDING,
        (_S.PROCEEDING, Step.PROVISIONAL): _S.PROCEEDING,
        (_S.TRYING, Step.SUCCESS): _S.COMPLETED,
        (_S.TRYING, Step.FAILURE): _S.COMPLETED,
        (_S.PROCEEDING, Step.SUCCESS): _S.COMPLETED,
        (_S.PROCEEDING, Step.FAILURE): _S.COMPLETED,
        (_S.TRYING, Step.TIMEOUT): _S.TERMINATED,  # timer F
        (_S.PROCEEDING, Step.TIMEOUT): _S.TERMINATED,  # timer F
        (_S.COMPLETED, Step.TIMEOUT): _S.TERMINATED,  # timer K
    },
}


def new_branch() -> str:
    """A branch unique in space and time (RFC 3261 section 8.1.1.7)."""
    return COOKIE + secrets.token_hex(8)


def _step(status: int) -> Step:
    if status < 200:
        return Step.PROVISIONAL
    return Step.SUCCESS if status < 300 else Step.FAILURE


# -- what the layer tells its user ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewRequest:
    """A request that is no retransmission: the user agent answers it with
    :meth:`Transactions.respond` (an ACK, which has no transaction of its
    own when it acknowledges a 2xx, needs no answer)."""

    request: Request
    addr: Address


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """A response to one of the user agent's requests (each provisional one,
    and the first final one)."""

    request: Request
    response: Response


@dataclass(frozen=True, slots=True)
class ClientTimedOut:
    """No final response came to the user agent's request (timer B or F):
    the user agent takes it as a 408 (RFC 3261 section 8.1.3.1)."""

    request: Request


@dataclass(frozen=True, slots=True)
class Answered:
    """A 2xx to an INVITE left its server transaction: the user agent
    repeats it (section 13.3.1.4) until the ACK comes, and gives up after
    64*T1 (then it ends the call with a BYE)."""

    request: Request
    response: Response


Event = NewRequest | ResponseReceived | ClientTimedOut | Answered


# -- one transaction ------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class Transaction:
    """One transaction's state, what it last sent and its two timers: the
    retransmission (``resend_at``, ``interval``) and the one that ends the
    state it is in (``ends_at``)."""

    kind: Kind
    request: Request
    addr: Address
    reliable: bool
    state: TransactionState
    #: Its key in the layer's table of server or client transactions.
    key: tuple[str, ...] = ()
    last: bytes | None = None
    resend_at: float | None = None
    interval: float = T1
    ends_at: float | None = None

    def move(self, step: Step) -> TransactionState:
        self.state = move(TRANSITIONS[self.kind], self.state, step, TransactionError)
        return self.state

    def due(self) -> float | None:
        deadlines = [t for t in (self.resend_at, self.ends_at) if t is not None]
        return min(deadlines, default=None)


def _server_key(request: Request) -> tuple[str, ...]:
    """Section 17.2.3: the top Via's branch and sent-by, and the method (an
    ACK matches the INVITE it acknowledges). A branch without the magic
    cookie comes from an RFC 2543 peer, whose requests are matched by what
    the transaction's requests share instead: Call-ID, CSeq number, the
    From (with its tag) and the top Via."""
    top = parse_via(request.headers.get("Via") or "")[0]
    branch = top.branch or ""
    method = "INVITE" if request.method == "ACK" else request.method
    sent_by = f"{top.host}:{top.port or ''}"
    if branch.startswith(COOKIE):
        return branch, sent_by, method
    cseq = CSeq.parse(request.headers.get("CSeq") or "")
    call_id, sender = request.headers.get("Call-ID") or "", request.headers.get("From") or ""
    return "2543", call_id, str(cseq.seq), sender, str(top), method


def _client_key(message: Request | Response) -> tuple[str, str] | None:
    """Section 17.1.3: the top Via's branch and the CSeq method."""
    vias = parse_via(message.headers.get("Via") or "")
    cseq = CSeq.parse(message.headers.get("CSeq") or "")
    method = "INVITE" if cseq.method == "ACK" else cseq.method
    return (vias[0].branch or "", method) if vias else None


def ack_for(request: Request, response: Response) -> Request:
    """The ACK of a 3xx to 6xx to an INVITE (section 17.1.1.3): the INVITE's
    Request-URI, Call-ID, From, top Via and Route, the response's To (with
    its tag), and the CSeq number with method ACK."""
    headers = Headers()
    headers.add("Via", (request.headers.get_all("Via") or [""])[0])
    for name in ("Route",):
        for value in request.headers.get_all(name):
            headers.add(name, value)
    headers.add("Max-Forwards", "70")
    headers.add("From", request.headers.get("From") or "")
    headers.add("To", response.headers.get("To") or "")
    headers.add("Call-ID", request.headers.get("Call-ID") or "")
    cseq = CSeq.parse(request.headers.get("CSeq") or "")
    headers.add("CSeq", str(CSeq(cseq.seq, "ACK")))
    return Request("ACK", request.uri, headers)


# -- the layer ------------------------------------------------------------------------


@dataclass
class Transactions:
    """The transaction layer of one SIP endpoint (RFC 3261 section 17)."""

    _server: dict[tuple[str, ...], Transaction] = field(default_factory=dict)
    _client: dict[tuple[str, ...], Transaction] = field(default_factory=dict)
    _out: list[tuple[bytes, Address]] = field(default_factory=list)
    _events: list[Event] = field(default_factory=list)
    #: Requests and responses matched to a live transaction and absorbed.
    retransmissions: int = 0

    # -- input: what arrives ------------------------------------------------------------

    def receive(
        self, message: Request | Response, addr: Address, reliable: bool, now: float
    ) -> None:
        """A parsed message from ``addr`` (``reliable``: it came over TCP).
        Raises :class:`~sip.errors.SipParseError` for one without the
        headers matching needs (a Via, a CSeq)."""
        if isinstance(message, Request):
            self._request(message, addr, reliable, now)
        else:
            self._response(message, now)

    def _request(self, request: Request, addr: Address, reliable: bool, now: float) -> None:
        if not request.headers.get("Via") or not request.headers.get("CSeq"):
            raise SipParseError("a request needs a Via and a CSeq")
        key = _server_key(request)
        tx = self._server.get(key)
        if tx is not None:
            if request.method == "ACK":
                if tx.kind is Kind.INVITE_SERVER and tx.state is _S.COMPLETED:
                    tx.move(Step.ACK)
                    # Timer I: linger to absorb ACK retransmissions.
                    tx.resend_at, tx.ends_at = None, now + (0.0 if tx.reliable else T4)
                    return
                if tx.kind is Kind.INVITE_SERVER and tx.state is _S.CONFIRMED:
                    self.retransmissions += 1
                    return
            else:
                self.retransmissions += 1
                # Accepted: absorbed; the user agent repeats its 2xx itself.
                if tx.last is not None and tx.state is not _S.ACCEPTED:
                    self._out.append((tx.last, addr))
                return
        if request.method == "ACK":
            # The ACK of a 2xx has no transaction (section 17.1.1.3): the
            # user agent's dialog takes it.
            self._events.append(NewRequest(request, addr))
            return
        kind = Kind.INVITE_SERVER if request.method == "INVITE" else Kind.SERVER
        state = _S.PROCEEDING if kind is Kind.INVITE_SERVER else _S.TRYING
        tx = Transaction(kind, request, addr, reliable, state, key)
        tx.ends_at = now + UNANSWERED
        self._server[key] = tx
        self._events.append(NewRequest(request, addr))
        if kind is Kind.INVITE_SERVER:
            self._send_response(tx, response_to(request, 100), now)

    def _response(self, response: Response, now: float) -> None:
        key = _client_key(response)
        tx = self._client.get(key) if key is not None else None
        if tx is None or tx.state is _S.TERMINATED:
            self.retransmissions += 1  # a stray or late one: dropped (17.1.3)
            return
        step = _step(response.status)
        was = tx.state
        if was is _S.COMPLETED:
            self.retransmissions += 1
            if tx.kind is Kind.INVITE_CLIENT and step is Step.FAILURE and tx.last is not None:
                self._out.append((tx.last, tx.addr))  # the ACK again
            return
        tx.move(step)
        if step is Step.PROVISIONAL:
            if tx.kind is Kind.INVITE_CLIENT:
                # Proceeding: the far end has it. No more retransmissions, and
                # no timer B: a phone may ring for minutes, and the user
                # agent cancels the call by its own no-answer limit.
                tx.resend_at = tx.ends_at = None
            elif tx.resend_at is not None:
                tx.interval = T2  # section 17.1.2.2: keep asking, at T2
        elif step is Step.SUCCESS and tx.kind is Kind.INVITE_CLIENT:
            self._forget(tx)  # the 2xx's ACK is the dialog's (17.1.1.3)
        elif tx.kind is Kind.INVITE_CLIENT:
            ack = bytes(ack_for(tx.request, response))
            tx.last = ack
            self._out.append((ack, tx.addr))
            tx.ends_at = now + (0.0 if tx.reliable else 32.0)  # timer D
        else:
            tx.resend_at = None
            tx.ends_at = now + (0.0 if tx.reliable else T4)  # timer K
        self._events.append(ResponseReceived(tx.request, response))

    # -- input: what the user agent sends ------------------------------------------------

    def respond(self, request: Request, response: Response, now: float) -> None:
        """Send ``response`` to ``request`` through its server transaction."""
        tx = self._server.get(_server_key(request))
        if tx is None or tx.state not in (_S.TRYING, _S.PROCEEDING):
            raise TransactionError(f"no open transaction for {request.method}")
        self._send_response(tx, response, now)

    def _send_response(self, tx: Transaction, response: Response, now: float) -> None:
        step = _step(response.status)
        tx.move(step)
        data = bytes(response)
        tx.last = data
        self._out.append((data, tx.addr))
        if step is Step.PROVISIONAL:
            return
        if tx.kind is Kind.INVITE_SERVER:
            if step is Step.SUCCESS:
                self._events.append(Answered(tx.request, response))
                tx.resend_at = None
                tx.ends_at = now + 64 * T1  # timer L, over TCP too (RFC 6026 8.7)
                return
            tx.interval = T1
            tx.resend_at = None if tx.reliable else now + T1  # timer G
            tx.ends_at = now + 64 * T1  # timer H
        else:
            tx.ends_at = now + (0.0 if tx.reliable else 64 * T1)  # timer J

    def request(self, request: Request, addr: Address, reliable: bool, now: float) -> None:
        """Send ``request`` (which carries a Via with a fresh :func:`new_branch`
        and a CSeq) through a new client transaction."""
        key = _client_key(request)
        if key is None:
            raise TransactionError("a request needs a Via with a branch")
        kind = Kind.INVITE_CLIENT if request.method == "INVITE" else Kind.CLIENT
        state = _S.CALLING if kind is Kind.INVITE_CLIENT else _S.TRYING
        data = bytes(request)
        tx = Transaction(kind, request, addr, reliable, state, key, last=data)
        tx.resend_at = None if reliable else now + T1  # timer A or E
        tx.ends_at = now + 64 * T1  # timer B or F
        self._client[key] = tx
        self._out.append((data, addr))

    # -- output --------------------------------------------------------------------------

    def next_event(self) -> Event | None:
        """The oldest event not yet read, or None."""
        return self._events.pop(0) if self._events else None

    @property
    def open(self) -> int:
        """Transactions not yet ended."""
        return len(self._server) + len(self._client)

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        return min((d for tx in self._all() if (d := tx.due()) is not None), default=None)

    def handle_timer(self, now: float) -> None:
        for tx in list(self._all()):
            if tx.ends_at is not None and now >= tx.ends_at:
                self._expire(tx)
            elif tx.resend_at is not None and now >= tx.resend_at:
                self._resend(tx, now)

    def _resend(self, tx: Transaction, now: float) -> None:
        if tx.last is not None:
            self._out.append((tx.last, tx.addr))
        # Timers A and G double without bound for an INVITE's request, up to
        # T2 for responses and other requests (17.1.1.2, 17.2.1, 17.1.2.2).
        cap = None if tx.kind is Kind.INVITE_CLIENT else T2
        tx.interval = tx.interval * 2 if cap is None else min(tx.interval * 2, cap)
        tx.resend_at = now + tx.interval

    def _expire(self, tx: Transaction) -> None:
        waiting = tx.state in (_S.CALLING, _S.TRYING, _S.PROCEEDING)
        if tx.state is not _S.TERMINATED:
            tx.move(Step.TIMEOUT)
        if waiting and tx.kind in (Kind.INVITE_CLIENT, Kind.CLIENT):
            self._events.append(ClientTimedOut(tx.request))
        self._forget(tx)

    def _forget(self, tx: Transaction) -> None:
        tx.resend_at = tx.ends_at = None
        server = tx.kind in (Kind.INVITE_SERVER, Kind.SERVER)
        table = self._server if server else self._client
        if table.get(tx.key) is tx:
            del table[tx.key]

    def _all(self) -> Iterator[Transaction]:
        yield from self._server.values()
        yield from self._client.values()
