"""Digits a phone keys, as events: RFC 4733 telephone-event and SIP INFO.

A patient dialling into a visit keys its PIN then ``#``; the bridge must see
every digit exactly once whichever way the provider relays it:

* :class:`EventReceiver`, RTP ``telephone-event`` (RFC 4733 section 2.3), one
  per call leg, with :func:`event_packets` to send a digit the same way;
* :func:`parse_info`, a digit in a SIP INFO request: ``application/dtmf-relay``
  (the Cisco body most PBXs send) or ``application/dtmf``;
* keys heard as tones in the audio itself (ITU-T Q.23/Q.24) are found by
  :class:`sip.audio.tones.ToneDetector`, for legs that negotiated neither.

A digit is always one character of :data:`DIGITS`; a verb that may find
several returns them as one string in the order keyed, empty for none, so a
caller collects a PIN with ``pin += ...``. Malformed input raises
:class:`~sip.errors.DtmfParseError` (a ``ValueError``), never another error:
the caller counts and drops it.
"""

from __future__ import annotations

import re
import struct

from sip.errors import DtmfParseError

__all__ = ["DIGITS", "EventReceiver", "digit_event", "event_packets", "parse_info"]

DIGITS = "0123456789*#ABCD"
"""The sixteen DTMF keys, indexed by their RFC 4733 event code (section 3)."""

# event (8) | E (1) R (1) volume (6) | duration (16), RFC 4733 section 2.3.
_PAYLOAD = struct.Struct("!BBH")
_END = 0x80
_VOLUME = 0x3F
_MOD = 1 << 32

# How far behind the newest finished event a timestamp may lie and still be a
# copy of an old packet rather than a new event. Late copies trail by a few
# packet intervals; a stream whose timestamp base jumped (a transfer, a
# re-INVITE, a failover of the provider's media server) lands anywhere in the
# 2**32 space, and a jump backwards must not hide the next digits. 2**20
# samples is over two minutes at 8 kHz, over 20 s at 48 kHz.
_STALE = 1 << 20

# A segment of a long event (RFC 4733 section 2.5.1.3) ends when its duration
# nears the 16-bit limit; the next segment carries a new timestamp and the same
# event code, and is the same key press.
_SEGMENT = 0xF000


def digit_event(digit: str) -> int:
    """The RFC 4733 event code of a key (section 3); ValueError if ``digit``
    is not one of :data:`DIGITS` (lower-case ``a``-``d`` are accepted)."""
    code = DIGITS.find(digit.upper()) if len(digit) == 1 else -1
    if code < 0:
        raise ValueError(f"not a DTMF key: {digit!r}")
    return code


def _behind(timestamp: int, reference: int) -> bool:
    """Whether ``timestamp`` is ``reference`` or up to :data:`_STALE` samples
    before it, modulo 2**32 (RFC 3550 timestamps wrap)."""
    return (reference - timestamp) % _MOD <= _STALE


class EventReceiver:
    """The digits of one call leg's ``telephone-event`` stream (RFC 4733).

    Feed every packet of the event payload type, in arrival order, to
    :meth:`receive`; it returns the digits the packet completed. An event is
    its RTP timestamp, which all its packets share (section 2.5.1.2), not its
    marker bit, which some providers never set and which is lost with the
    first packet. So:

    * a digit is reported at the first packet of its event with the E bit
      (section 2.3.2); the two redundant copies of the final packet (section
      2.5.1.4), duplicates and late packets of a finished event are ignored;
    * an event whose final packets were all lost is reported when a packet of
      a newer event arrives, or when :meth:`handle_timer` finds its duration
      has not grown for ``hold`` seconds (section 2.5.2: updates come every
      packet interval while the key is held);
    * "newer" is compared modulo 2**32; a packet up to 2**20 samples behind the
      last finished event is a late copy; anything else starts a new event,
      so a timestamp base that jumps backwards loses no digit;
    * the segments of an event too long for 16 bits of duration (section
      2.5.1.3) are one press.

    Events other than 0-15 (RFC 4734's modem and fax tones, hook flash) are
    no digits: they end a pending digit like any newer event, are otherwise
    ignored and counted in ``non_digit_packets``. A payload too short for the
    four octets of section 2.3 raises :class:`DtmfParseError`; octets beyond
    the first four are not read (RFC 2198 redundancy arrives as RED, not
    here). The marker bit is only counted: ``unmarked_starts`` is the events
    whose first packet seen had none, a figure worth a look per provider.
    """

    def __init__(self, *, hold: float = 0.25) -> None:
        self.hold = hold
        self.non_digit_packets = 0
        self.unmarked_starts = 0
        # The event seen and not yet reported: its timestamp, code, the
        # longest duration seen, and when that duration last grew.
        self._pending: tuple[int, int, int, float] | None = None
        # The timestamp of the newest event reported (or ended unreported).
        self._finished: int | None = None

    def receive(self, payload: bytes, timestamp: int, marker: bool, now: float) -> str:
        """Take one packet's payload, its RTP timestamp and marker bit, at ``now``
        (seconds on the caller's monotonic clock); return the digits it
        completed, oldest first: "" for most packets, one digit at an event's
        end, two when it also ends an event whose final packets were lost.

        Raises :class:`DtmfParseError` for a payload under four octets.
        """
        if len(payload) < _PAYLOAD.size:
            raise DtmfParseError(f"telephone-event payload of {len(payload)} octets (RFC 4733 2.3)")
        code, flags, duration = _PAYLOAD.unpack_from(payload)
        timestamp %= _MOD
        if self._finished is not None and _behind(timestamp, self._finished):
            return ""
        digits = ""
        pending = self._pending
        if pending is not None and timestamp != pending[0]:
            start, old, _, _ = pending
            if _behind(timestamp, start):
                # An event older than the pending one that we never saw start:
                # reordering across whole events is too rare to reorder for.
                return ""
            if code == old and pending[2] >= _SEGMENT:
                # The next segment of a long press: same press, new timestamp.
                self._pending = pending = (timestamp, code, duration, now)
            else:
                digits = self._finish()
                pending = None
        if code >= len(DIGITS):
            self.non_digit_packets += 1
            return digits
        if pending is None:
            if not marker:
                self.unmarked_starts += 1
            self._pending = (timestamp, code, duration, now)
        elif duration > pending[2]:
            self._pending = (pending[0], pending[1], duration, now)
        if flags & _END:
            digits += self._finish()
        return digits

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` wants to be called: ``hold`` seconds after
        the pending event's duration last grew; None with no event pending."""
        return None if self._pending is None else self._pending[3] + self.hold

    def handle_timer(self, now: float) -> str:
        """End the pending event if its duration has not grown for ``hold``
        seconds, as if its final packet had come: its digit, or ""."""
        if self._pending is None or now < self._pending[3] + self.hold:
            return ""
        return self._finish()

    def _finish(self) -> str:
        assert self._pending is not None
        timestamp, code, _, _ = self._pending
        self._pending = None
        self._finished = timestamp
        return DIGITS[code]


def event_packets(
    digit: str,
    duration_samples: int,
    *,
    packet_samples: int = 160,
    volume: int = 10,
    end_copies: int = 3,
) -> list[tuple[bytes, bool]]:
    """The payloads and marker bits that send one key (RFC 4733 section 2.5.1).

    All share the RTP timestamp of the event's start; the caller gives them
    consecutive sequence numbers and sends one every ``packet_samples``. The
    first has the marker bit and one interval of duration; each update adds
    an interval; the final packet, with the E bit and ``duration_samples``,
    is sent ``end_copies`` times (section 2.5.1.4). ``volume`` is the power
    level in -dBm0 (section 2.3.4). ValueError for a key not in
    :data:`DIGITS`, a duration outside 1..65535 (a longer press needs
    segments, section 2.5.1.3, which the bridge never sends) or a volume
    outside 0..63.
    """
    code = digit_event(digit)
    if not 0 < duration_samples <= 0xFFFF or packet_samples <= 0:
        raise ValueError(f"duration {duration_samples}, interval {packet_samples} samples")
    if not 0 <= volume <= _VOLUME or end_copies < 1:
        raise ValueError(f"volume {volume}, {end_copies} final copies")
    packets = [
        (_PAYLOAD.pack(code, volume, elapsed), elapsed == packet_samples)
        for elapsed in range(packet_samples, duration_samples, packet_samples)
    ]
    final = _PAYLOAD.pack(code, _END | volume, duration_samples)
    if not packets:
        # A press shorter than one interval: its final packet is also its first.
        packets.append((final, True))
        end_copies -= 1
    packets.extend((final, False) for _ in range(end_copies))
    return packets


# --- SIP INFO ----------------------------------------------------------------

# Bodies are a line or two; anything longer is not a digit.
_MAX_BODY = 512
_KEY_VALUE = re.compile(r"\s*([A-Za-z-]+)\s*=\s*(\S*)\s*")


def _signal(value: str) -> str:
    """A key named in a body: the key itself (``5``, ``*``, ``a``) or its RFC
    4733 event code (``10`` for ``*``, ``11`` for ``#``), as PBXs differ."""
    if len(value) == 1 and value.upper() in DIGITS:
        return value.upper()
    if value.isascii() and value.isdigit() and len(value) <= 2 and int(value) < len(DIGITS):
        return DIGITS[int(value)]
    raise DtmfParseError("INFO signal is not a DTMF key")


def parse_info(content_type: str, body: bytes) -> str:
    """The key a SIP INFO request relays (RFC 6086 carries the body; the
    packages are de facto), as one character of :data:`DIGITS`.

    * ``application/dtmf-relay``: lines of ``Name=value``, of which
      ``Signal`` is the key (``Duration`` and others are not needed: the
      digit counts once however long it was held). Names in any case, spaces
      around ``=``, CRLF or LF line ends;
    * ``application/dtmf``: the body is the key, or its event code.

    Media type parameters (``;charset=...``) are ignored. Raises
    :class:`DtmfParseError` for another content type or a body that names no
    key, names two, or is not ASCII.
    """
    media_type = content_type.split(";", 1)[0].strip().lower()
    if len(body) > _MAX_BODY:
        raise DtmfParseError("INFO body too long for a digit")
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise DtmfParseError("INFO body is not ASCII") from None
    if media_type == "application/dtmf":
        return _signal(text.strip())
    if media_type != "application/dtmf-relay":
        raise DtmfParseError(f"INFO content type {media_type[:40]!r} carries no digit")
    signals = []
    for line in text.splitlines():
        match = _KEY_VALUE.fullmatch(line)
        if match is not None and match[1].lower() == "signal":
            signals.append(match[2])
    if len(signals) != 1:
        raise DtmfParseError(f"dtmf-relay body with {len(signals)} Signal lines")
    return _signal(signals[0])
