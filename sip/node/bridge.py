"""The phone bridge: calls from clinics' trunks into visits' rooms.

One :class:`Bridge` per process puts the pieces below it together: the SIP
endpoint with the user agent on it (:class:`~sip.node.desk.CallDesk`), and
for each call a :class:`PhoneCall`, which owns the call's RTP leg
(:class:`~sip.node.leg.PhoneLeg`), its IVR (:class:`~sip.calls.ivr.Ivr`),
and, once the caller keyed a PIN that opens a visit, its seat in the room
(:class:`~sip.node.seat.RoomSeat`). Each does what it is told:

* the desk's call events: open media (``MediaWanted``), start it
  (``CallAnswered``, ``MediaChanged``), a digit sent as INFO, the end;
* the leg's: every 20 ms the phone's audio (up to the seat, and the seat's
  mix down to the leg in the same tick), a digit from RFC 4733 events or
  tones, a dead leg (no RTP for 30 s: BYE);
* the IVR's actions: play or stop a prompt (:class:`~sip.node.voice.Voice`),
  look a PIN up (:class:`~sip.node.pins.PinDesk`), join, hang up.

**Joining.** A PIN that opens a visit mints the phone's room token the way
its video links are minted (:func:`booking.calls.video_link`: the visit's
window, its booking checked at every join), for a participant named by the
caller's masked number (``Phone ••34``) with the patient's role: the PIN is
the patient's, but the caller may be a relative or an interpreter they
passed it to, so the room is told the number, not the patient's name. The
seat joins (``joined``, or ``waiting`` until the doctor admits it, while the
caller hears so); where the room is being recorded the caller hears the
notice and keys 1 before the seat answers the room's consent question and
publishes. A recording asked for later, while the phone is in, is put to
the caller the same way: 1 agrees; hanging up leaves it unanswered, so the
recording does not start without them.

Everything a call does runs on the loop in callbacks, except the few awaits
(the PIN lookup, the seat's join and publish), which run in tasks the call
owns and cancels at its end.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import hashlib
import logging
import secrets
import socket
import uuid
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING

import asyncpg

from booking.calls import is_open, video_link
from sip.calls.agent import (
    CallAnswered,
    CallEnded,
    CallEvent,
    DialFailed,
    Digit,
    MediaChanged,
    MediaWanted,
    Ringing,
    Trunk,
    UserAgent,
)
from sip.calls.ivr import Hangup, Ivr, Join, LookUp, Play, StopPrompt, Visit
from sip.errors import DialRefused, MediaPortError
from sip.formats import PHONE_CODECS
from sip.node.desk import CallDesk
from sip.node.leg import PhoneLeg
from sip.node.metrics import (
    ACTIVE,
    CALLS,
    COLLECTOR,
    DELAY,
    IN_ROOMS,
    PIN_FAILURES,
    SETUP,
)
from sip.node.outcalls import Outcalls
from sip.node.pins import Blocked, PinDesk, masked
from sip.node.settings import BridgeConfig
from sip.node.voice import Voice
from sip.transport.endpoint import SipEndpoint
from sip.wire.sdp import KEY_LENGTH, PhoneMedia
from wadud.config import Settings
from wadud.web.ratelimit import Limiter

if TYPE_CHECKING:
    from sip.audio.pcm import Pcm
    from sip.node.seat import RoomSeat

__all__ = ["Bridge", "PhoneCall"]

log = logging.getLogger("wadud.sip")

_OUTCOMES = {
    "wrong PIN": "wrong_pin",
    "blocked": "blocked",
    "no PIN keyed": "no_key",
    "no consent": "no_key",
    "room refused": "refused",
}
#: Seconds the seat's publish may take once admitted.
_PUBLISH_WAIT = 20.0


class PhoneCall:
    """One call, from its INVITE to its end (see the module docstring)."""

    def __init__(
        self,
        bridge: Bridge,
        call_id: str,
        trunk: Trunk,
        caller: str,
        srtp: bool,
        now: float,
        *,
        booking: asyncpg.Record | None = None,
    ) -> None:
        self.bridge = bridge
        self.id = call_id
        self.trunk = trunk
        #: The far end's number: who called in, or whom the bridge called.
        self.caller = caller
        self.srtp = srtp
        self.started = now
        self.ivr = Ivr(trunk.language, default=bridge.config.language)
        #: A call the bridge placed: the visit it is for. Its state, for
        #: whoever asked for it: dialling, ringing, answered, in the room,
        #: then how it ended.
        self.booking = booking
        #: Told each new :attr:`state` (whoever asked for a placed call).
        self.on_state: Callable[[str], None] | None = None
        self._state = "dialling" if booking is not None else "answering"
        self.leg: PhoneLeg | None = None
        self.media: PhoneMedia | None = None
        self.seat: RoomSeat | None = None
        self.in_room = False
        self.ended = False
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._told_recording: str | None = None

    @property
    def state(self) -> str:
        return self._state

    @state.setter
    def state(self, value: str) -> None:
        self._state = value
        if self.on_state is not None:
            self.on_state(value)

    # -- from the desk --------------------------------------------------------------

    def open(self) -> None:
        """Open the call's media, then answer it."""
        self._task(self._open_media(), "media")

    async def _open_media(self) -> None:
        try:
            leg = await PhoneLeg.open(
                self.bridge.config.media_host,
                self.bridge.config.rtp_ports,
                on_audio=self._tick,
                on_digit=self.digit,
                on_dead=self._dead,
            )
        except MediaPortError:
            log.error("no RTP port free for a call: widen sip_rtp_ports")
            self.bridge.desk.reject(self.id, 503)
            return
        if self.ended:
            leg.close()
            return
        self.leg = leg
        key = secrets.token_bytes(KEY_LENGTH) if self.srtp else None
        self.bridge.desk.media_ready(self.id, self.bridge.config.public_host, leg.port, key)

    def answered(self, media: PhoneMedia) -> None:
        self.media = media
        if self.leg is not None:
            self.leg.start(media)
        self.state = "answered"
        if self.booking is not None:
            # A call we placed: its visit is known, no menu and no PIN.
            self.ivr.dialled()
            self._task(self._enter_dialled(self.booking), "enter")
            return
        self.ivr.answered(self._now())
        self._drive()

    def ringing(self) -> None:
        self.state = "ringing"

    async def _enter_dialled(self, booking: asyncpg.Record) -> None:
        await self._enter(booking)
        self._drive()

    def changed(self, media: PhoneMedia) -> None:
        self.media = media
        if self.leg is not None:
            self.leg.start(media)

    def digit(self, key: str) -> None:
        """A key, whichever way it came (INFO, RFC 4733, a tone)."""
        if self.ended:
            return
        if self.in_room:
            self._digit_in_room(key)
            return
        self.ivr.digit(key, self._now())
        self._drive()

    def end(self, reason: str, outcome: str | None = None) -> None:
        """The call is over (either side's BYE, a CANCEL, no ACK; for one we
        placed, no answer: ``outcome`` says which)."""
        if self.ended:
            return
        self.ended = True
        if self._timer is not None:
            self._timer.cancel()
        for task in self._tasks:
            task.cancel()
        stats = None
        if self.leg is not None:
            stats = self.leg.stats
            self.leg.close()
        if stats is not None:
            self.bridge.frames.update(
                received=stats.packets_in, concealed=stats.concealed, late=stats.late
            )
        outcome = outcome or (
            "joined"
            if self.ivr.visit is not None and self.in_room
            else _OUTCOMES.get(self.ivr.reason, "hung_up" if reason == "hangup" else "failed")
        )
        self.state = outcome
        CALLS.labels(outcome).inc()
        ACTIVE.dec()
        if self.in_room:
            IN_ROOMS.dec()
        if self.seat is not None:
            self.bridge.spawn(self.seat.leave(), f"seat leave {self.id}")
        log.info(
            "phone call ended",
            extra={
                "call": self.id,
                "trunk": self.trunk.name,
                "caller": masked(self.caller),
                "reason": reason,
                "outcome": outcome,
            },
        )

    # -- the IVR ---------------------------------------------------------------------

    def _drive(self) -> None:
        """Do what the IVR asks, and keep its one timer."""
        if self.ended:
            return
        for action in self.ivr.actions():
            if isinstance(action, Play):
                self._play(action.prompt, action.language, self._prompt_done)
            elif isinstance(action, StopPrompt):
                if self.leg is not None:
                    self.leg.stop_prompt()
            elif isinstance(action, LookUp):
                self._task(self._look_up(action.pin), "pin")
            elif isinstance(action, Join):
                self._task(self._join(action), "join")
            elif isinstance(action, Hangup):
                self.bridge.desk.hang_up(self.id)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        due = self.ivr.get_timer()
        if due is not None:
            self._timer = asyncio.get_running_loop().call_at(due, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self.ivr.handle_timer(self._now())
        self._drive()

    def _prompt_done(self) -> None:
        self.ivr.prompt_done(self._now())
        self._drive()

    def _play(self, prompt: str, language: str, on_done: Callable[[], None] | None = None) -> None:
        if self.leg is None or self.media is None:
            return
        rate = PHONE_CODECS[self.media.codec].sample_rate
        self.leg.stop_prompt()
        self.leg.play(self.bridge.voice.pcm(prompt, language, rate), on_done)

    async def _look_up(self, pin: str) -> None:
        found = await self.bridge.pins.look_up(
            pin, caller=self.caller, trunk=self.trunk.name, now=dt.datetime.now(dt.UTC)
        )
        if isinstance(found, Blocked):
            PIN_FAILURES.labels("blocked").inc()
            self.ivr.blocked(self._now())
        elif found is None:
            PIN_FAILURES.labels("wrong").inc()
            self.ivr.wrong(self._now())
        else:
            await self._enter(found)
        self._drive()

    async def _enter(self, booking: asyncpg.Record) -> None:
        """Take the seat in the visit's room: joined, or waiting until the
        doctor admits it; then tell the IVR whether it is recorded."""
        from sip.node.seat import RoomSeat

        bridge = self.bridge
        link = video_link(
            bridge.settings,
            booking,
            identity=self._identity(str(booking["id"])),
            name=f"Phone {masked(self.caller)}",
            role="patient",
            device="phone",
        )
        self.seat = seat = RoomSeat(
            bridge.config.room_url,
            link.token,
            label="phone",
            complexity=bridge.config.opus_complexity,
        )
        try:
            frame = await seat.join()
            if frame.get("type") == "waiting":
                self._play("waiting", self.ivr.language)
                await seat.client.wait_admitted(bridge.config.admit_wait)
        except Exception as exc:
            # A refused join (the visit ended, the room is full), the wait
            # for admission ran out, or the server is unreachable: the
            # caller is told, and the call ends.
            log.warning(
                "a phone caller could not join", extra={"call": self.id, "error": repr(exc)}
            )
            self.ivr.refused(self._now())
            return
        recorded = seat.client.recording_asked is not None
        self.ivr.found(Visit(str(booking["id"]), recorded), self._now())

    async def _join(self, join: Join) -> None:
        seat = self.seat
        assert seat is not None
        try:
            if join.consented and seat.client.recording_asked is not None:
                await seat.client.answer_recording(True)
            async with asyncio.timeout(_PUBLISH_WAIT):
                await seat.admitted(_PUBLISH_WAIT)
        except Exception as exc:
            log.warning(
                "a phone caller's seat could not publish",
                extra={"call": self.id, "error": repr(exc)},
            )
            self.ivr.refused(self._now())
            self._drive()
            return
        self.in_room = True
        self.state = "in room"
        IN_ROOMS.inc()
        SETUP.observe(self._now() - self.started)
        self.ivr.joined(self._now())
        self._drive()
        self._task(self._watch_room(), "room")

    # -- in the room -------------------------------------------------------------------

    def _tick(self, pcm: Pcm) -> None:
        """Every 20 ms: the phone's voice up, the room's mix down."""
        seat, leg = self.seat, self.leg
        if not self.in_room or seat is None or leg is None:
            return
        seat.phone_audio(pcm)
        leg.send_audio(seat.mix())
        # In the room a key means something only while the recording notice
        # asks for 1 (:meth:`_digit_in_room`).
        leg.listen_for_tones(seat.client.recording_asked is not None)
        DELAY.observe(leg.delay)

    def _digit_in_room(self, key: str) -> None:
        seat = self.seat
        if key == "1" and seat is not None and seat.client.recording_asked is not None:
            if self.leg is not None:
                self.leg.stop_prompt()
            self._task(seat.client.answer_recording(True), "consent")

    async def _watch_room(self) -> None:
        """While the phone is in the room: a recording asked for is put to
        the caller (the notice; 1 agrees), and the phone's removal from the
        room (the doctor removed it, ended the visit) ends the call."""
        seat = self.seat
        assert seat is not None
        client = seat.client

        def news() -> bool:
            return client.state == "closed" or client.recording_asked not in (
                None,
                self._told_recording,
            )

        while True:
            await client.wait_until(news, within=24 * 3600.0)
            if client.state == "closed":
                log.info("the room let the phone go", extra={"call": self.id})
                self.bridge.desk.hang_up(self.id)
                return
            self._told_recording = client.recording_asked
            self._play("recording_notice", self.ivr.language)

    # -- helpers -------------------------------------------------------------------------

    def _dead(self, reason: str) -> None:
        log.info("a phone leg went silent", extra={"call": self.id, "reason": reason})
        self.bridge.desk.hang_up(self.id)

    def _identity(self, booking_id: str) -> str:
        """The phone's identity in the room: the same for one number calling
        one visit again (its consent answers carry over), never the number."""
        digest = hashlib.sha256(
            f"{booking_id}\n{self.trunk.name}\n{self.caller}".encode()
        ).hexdigest()
        return "phone-" + digest[:16]

    def _task(self, work: Coroutine[object, object, None], what: str) -> None:
        task = asyncio.get_running_loop().create_task(self._guard(work), name=f"{what} {self.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guard(self, work: Coroutine[object, object, None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("a phone call's step failed", extra={"call": self.id})
            self.bridge.desk.hang_up(self.id)

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()


class Bridge:
    """The phone bridge of one process: :meth:`start`, then :meth:`close`."""

    def __init__(
        self,
        config: BridgeConfig,
        settings: Settings,
        pool: asyncpg.Pool,
        limiter: Limiter,
        *,
        voice: Voice | None = None,
    ) -> None:
        self.config = config
        self.settings = settings
        self.voice = voice or Voice(config.prompts_dir)
        self.pins = PinDesk(pool, limiter)
        contact = f"sip:bridge@{config.public_host}:{config.port}"
        self.agent = UserAgent(config.trunks, contact)
        self.desk = CallDesk(self.agent, self._on_call)
        self.endpoint = SipEndpoint(self.desk, config.host, config.port, sent_by=config.public_host)
        # Before any call comes in: the calls the bridge places go out through it.
        self.desk.attach(self.endpoint)
        self.calls: dict[str, PhoneCall] = {}
        #: The phones' audio of the calls that ended (the live ones' is
        #: read from their legs): packets received, frames concealed, late.
        self.frames: collections.Counter[str] = collections.Counter()
        self._background: set[asyncio.Task[None]] = set()
        #: The calls asked of the bridges, with a trunk that places calls.
        self.outcalls: Outcalls | None = None
        COLLECTOR.bridges.add(self)

    @property
    def port(self) -> int:
        return self.endpoint.port

    async def start(self) -> None:
        """Make the prompts (espeak-ng, once: cached on disk), then listen."""
        await self.voice.prepare()
        await self.endpoint.start()
        if self.config.public_host and ":" not in self.config.public_host:
            # The Contact names the port: it is known only now for port 0.
            self.agent.contact = f"sip:bridge@{self.config.public_host}:{self.endpoint.port}"
        if any(t.outbound is not None for t in self.config.trunks):
            name = f"{socket.gethostname()}:{self.endpoint.port}"
            self.outcalls = Outcalls(self.pins.pool, name, self.dial_out)
            await self.outcalls.start()
        log.info("phone bridge listening", extra={"port": self.endpoint.port})

    async def close(self) -> None:
        """Hang up every call, then stop listening."""
        if self.outcalls is not None:
            await self.outcalls.close()
        for call_id in list(self.calls):
            self.desk.hang_up(call_id)
        for call in list(self.calls.values()):
            call.end("closing")
        self.calls.clear()
        self.desk.close()
        await self.endpoint.close()
        if self._background:
            await asyncio.wait(self._background, timeout=5.0)

    def spawn(self, work: Coroutine[object, object, None], name: str) -> None:
        """Work that outlives its call (a seat leaving the room)."""
        task = asyncio.get_running_loop().create_task(_quietly(work), name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def dial_out(
        self,
        booking_id: str,
        *,
        number: str | None = None,
        ring_timeout: float = 45.0,
        on_state: Callable[[str], None] | None = None,
    ) -> PhoneCall:
        """Call the phone of ``booking_id``'s patient (or ``number``, which
        must then be on the trunk's ``dial_allow``) into the visit's room,
        through the first trunk with an ``outbound`` address. The call's
        :attr:`PhoneCall.state` says how it goes (each new one to
        ``on_state``). Raises
        :class:`~sip.errors.DialRefused` for a visit not open now, no trunk
        that places calls, a trunk at its ``max_calls``, or a number the
        bridge may not call."""
        try:
            uid = uuid.UUID(booking_id)
        except ValueError:
            raise DialRefused("no such visit") from None
        async with self.pins.pool.acquire() as conn:
            row = await conn.fetchrow(
                """SELECT b.*, u.phone AS patient_phone FROM bookings b
                   JOIN users u ON u.id = b.patient_id WHERE b.id = $1""",
                uid,
            )
        now = dt.datetime.now(dt.UTC)
        if row is None or not is_open(row, now):
            raise DialRefused("the visit is not open now")
        trunk = next((t for t in self.config.trunks if t.outbound is not None), None)
        if trunk is None or trunk.outbound is None:
            raise DialRefused("no trunk places calls: give one an outbound address")
        busy = sum(1 for d in self.agent.dialogs.values() if d.trunk.name == trunk.name)
        if busy >= trunk.max_calls:
            raise DialRefused(f"trunk {trunk.name} is at its max_calls ({trunk.max_calls})")
        patient = row["patient_phone"]
        target = number or patient
        if not target:
            raise DialRefused("the patient has no phone number on file")
        if target != patient and target not in trunk.dial_allow:
            raise DialRefused(
                f"{masked(target)} is neither the patient's number nor on the trunk's dial_allow"
            )
        loop = asyncio.get_running_loop()
        call = PhoneCall(self, "", trunk, target, False, loop.time(), booking=row)
        call.on_state = on_state
        leg = await PhoneLeg.open(
            self.config.media_host, self.config.rtp_ports,
            on_audio=call._tick, on_digit=call.digit, on_dead=call._dead,
        )  # fmt: skip
        call.leg = leg
        host, port = trunk.outbound
        call.id = self.desk.dial(
            trunk, f"sip:{target}@{host}:{port}", trunk.outbound,
            host=self.config.public_host, port=leg.port, key=None, ring_timeout=ring_timeout,
        )  # fmt: skip
        self.calls[call.id] = call
        ACTIVE.inc()
        log.info(
            "placing a phone call",
            extra={"call": call.id, "trunk": trunk.name, "number": masked(target)},
        )
        return call

    def _on_call(self, event: CallEvent) -> None:
        if isinstance(event, MediaWanted):
            new = PhoneCall(
                self, event.call_id, event.trunk, event.caller, event.srtp,
                asyncio.get_running_loop().time(),
            )  # fmt: skip
            self.calls[event.call_id] = new
            ACTIVE.inc()
            new.open()
            return
        call = self.calls.get(event.call_id)
        if call is None:
            return
        if isinstance(event, CallAnswered):
            call.answered(event.media)
        elif isinstance(event, MediaChanged):
            call.changed(event.media)
        elif isinstance(event, Digit):
            call.digit(event.key)
        elif isinstance(event, Ringing):
            call.ringing()
        elif isinstance(event, DialFailed):
            del self.calls[event.call_id]
            call.end(event.reason, event.reason.replace(" ", "_"))
        elif isinstance(event, CallEnded):
            del self.calls[event.call_id]
            call.end(event.reason)


async def _quietly(work: Coroutine[object, object, None]) -> None:
    with contextlib.suppress(Exception):
        await work
