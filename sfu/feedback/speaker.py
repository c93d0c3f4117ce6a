"""Active-speaker detection from client-to-mixer audio levels (RFC 6464).

Every audio packet a publisher sends carries, in the ssrc-audio-level header
extension, the level of the audio it encodes in -dBov (0 loudest, 127 silence;
RFC 6464 section 3) and a voice-activity flag. The worker reads it with
:func:`rtc.rtp.extensions.audio_level` and feeds it here with ``now``; no decoding.

Per participant the detector keeps the samples of the last ``window`` seconds
and scores the participant by their mean loudness (``127 - level``, so dB
above the floor; a sample flagged as no voice counts as silence, but only from
a sender that has ever set the flag: aiortc, for one, always leaves it clear,
and its levels alone must still count). A
participant whose packets stop (muted, left, Opus DTX in silence) loses their
samples as the window slides and scores zero.

Hysteresis, so the highlight does not flap between two people talking over
each other: a challenger takes over only after being the loudest, above
``threshold`` and by ``margin`` dB over the current speaker, for ``hold``
seconds of consecutive evaluations. The current speaker stays the speaker
through their own silence until someone else qualifies, as conferencing
clients expect. Evaluations run every ``interval`` seconds from
:meth:`SpeakerDetector.handle_timer` (sans-I/O: :meth:`SpeakerDetector.get_timer`
says when), and each change is returned as a :class:`SpeakerChanged` event.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass

from rtc.errors import RtpParseError
from rtc.rtp.extensions import audio_level

__all__ = ["SpeakerChanged", "SpeakerDetector"]

Key = Hashable

_SILENCE = 127


@dataclass(frozen=True, slots=True)
class SpeakerChanged:
    """The active speaker changed (``speaker`` is ``None`` when nobody is left)."""

    speaker: Key | None
    previous: Key | None
    loudness: float
    """The new speaker's score: mean dB above -127 dBov over the window."""


class _Participant:
    __slots__ = ("samples", "total", "uses_vad")

    def __init__(self) -> None:
        self.samples: deque[tuple[float, int]] = deque()
        self.total = 0
        # RFC 6464 makes the V flag optional to compute; trust it only from a
        # sender that has been seen to set it.
        self.uses_vad = False


class SpeakerDetector:
    """Dominant speaker of one room from RFC 6464 levels, with hysteresis.

    ``threshold``: the lowest score (dB above -127 dBov) that counts as
    speaking; the default, 127 - 60, is speech louder than -60 dBov on
    average. ``margin``: dB a challenger must beat the current speaker by.
    """

    def __init__(
        self,
        *,
        window: float = 1.0,
        interval: float = 0.2,
        hold: float = 0.6,
        threshold: float = 67.0,
        margin: float = 6.0,
    ) -> None:
        self.window = window
        self.interval = interval
        self.hold = hold
        self.threshold = threshold
        self.margin = margin
        self.speaker: Key | None = None
        self._participants: dict[Key, _Participant] = {}
        self._challenger: Key | None = None
        self._challenger_since = 0.0
        self._next: float | None = None

    def hear(self, participant: Key, packet: bytes, ext_id: int, now: float) -> bool:
        """An RTP packet's ssrc-audio-level (RFC 6464, header extension ``ext_id``)
        for :meth:`update`; False when it carries none (or it is malformed)."""
        try:
            level = audio_level(packet, ext_id)
        except RtpParseError:
            return False
        if level is None:
            return False
        self.update(participant, level[0], level[1], now)
        return True

    def update(self, participant: Key, voice: bool, level: int, now: float) -> None:
        """One audio packet's ``(voice, level)`` from ssrc-audio-level (RFC 6464 section 3)."""
        p = self._participants.get(participant)
        if p is None:
            p = self._participants[participant] = _Participant()
        if voice:
            p.uses_vad = True
        loudness = _SILENCE - (level & 0x7F) if voice or not p.uses_vad else 0
        p.samples.append((now, loudness))
        p.total += loudness
        if self._next is None:
            self._next = now + self.interval

    def remove(self, participant: Key, now: float) -> SpeakerChanged | None:
        """Forget a participant who left; if they were the speaker, pick the next one now."""
        self._participants.pop(participant, None)
        if self._challenger == participant:
            self._challenger = None
        if self.speaker != participant:
            return None
        best, score = self._loudest(now)
        if best is not None and score < self.threshold:
            best = None
        previous, self.speaker = self.speaker, best
        self._challenger = None
        return SpeakerChanged(best, previous, score if best is not None else 0.0)

    def score(self, participant: Key, now: float) -> float:
        """Mean loudness of a participant over the window ending at ``now`` (0 if silent)."""
        p = self._participants.get(participant)
        if p is None:
            return 0.0
        self._slide(p, now)
        return p.total / len(p.samples) if p.samples else 0.0

    def _slide(self, p: _Participant, now: float) -> None:
        limit = now - self.window
        samples = p.samples
        while samples and samples[0][0] <= limit:
            p.total -= samples.popleft()[1]

    def _loudest(self, now: float) -> tuple[Key | None, float]:
        best: Key | None = None
        best_score = -1.0
        for key in self._participants:
            s = self.score(key, now)
            if s > best_score:
                best, best_score = key, s
        return best, max(best_score, 0.0)

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` next wants to run (``None`` before any level arrived)."""
        return self._next

    def handle_timer(self, now: float) -> SpeakerChanged | None:
        """Evaluate the room; the change of speaker, if this evaluation made one."""
        self._next = now + self.interval if self._participants else None
        best, score = self._loudest(now)
        if best is None or best == self.speaker or score < self.threshold:
            self._challenger = None
            return None
        current = self.speaker
        if current is not None and current in self._participants:
            current_score = self.score(current, now)
            if current_score >= self.threshold and score < current_score + self.margin:
                self._challenger = None
                return None
        if self._challenger != best:
            self._challenger, self._challenger_since = best, now
            if self.hold > 0 and current is not None:
                return None
        elif now - self._challenger_since < self.hold:
            return None
        self.speaker = best
        self._challenger = None
        return SpeakerChanged(best, current, score)
