"""A call room's recording and everyone's consent to it, without I/O.

A participant who may record (the ``record`` action: a doctor) asks to
record (``record`` with ``on``: true). Everyone in the room (JOINED or
DETACHED) who counts in its consent (the ``consent`` action: not an
observer) is asked (``recording_asked``), the asker counting as agreed; the recording starts
only once every one of them has agreed (``recording`` ``on``), and each
screen shows it. Whoever comes in later (admitted, or a new connection of
a new person) is asked too and may not publish until they answer; one
refusal stops the recording (``recording`` ``off``, reason ``refused``),
whether it was still asking or already running. Who may record may stop it
(reason ``stopped``); the media side failing stops it (reason ``failed``).
A stopped recording is over: recording again asks everyone again, under a
new id.

Answers are per identity (the person, not the connection), so a resume or a
rejoin keeps them. What the adapter must do comes back as outputs:
:class:`RecordingAsked` (make the recording's row and key),
:class:`ConsentAnswered` (keep the answer), :class:`RecordingStart` (the
worker starts writing), :class:`RecordingStop` (it stops), in that order.

States::

    off --record on--> asking --all agreed--> on
     ^                   |                     |
     +--- refused, stopped, failed ------------+
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from signalling import errors

__all__ = [
    "ConsentAnswered",
    "RecordingAsked",
    "RecordingOutput",
    "RecordingStart",
    "RecordingStop",
    "RoomConsent",
    "Voter",
]

StopReason = Literal["stopped", "refused", "failed"]


@dataclass(frozen=True)
class Voter:
    """A participant as the consent sees them."""

    id: str
    identity: str
    role: str
    #: Whether they are asked and count (the ``consent`` action): an
    #: observer, who is neither seen nor heard, is not.
    counts: bool


@dataclass(frozen=True)
class RecordingAsked:
    """A recording was asked for by ``requested_by``: make its row."""

    recording_id: str
    requested_by: Voter


@dataclass(frozen=True)
class ConsentAnswered:
    recording_id: str
    voter: Voter
    agreed: bool


@dataclass(frozen=True)
class RecordingStart:
    recording_id: str


@dataclass(frozen=True)
class RecordingStop:
    recording_id: str
    reason: StopReason
    #: Whether it had started (the worker was writing).
    started: bool
    detail: str = ""


RecordingOutput = RecordingAsked | ConsentAnswered | RecordingStart | RecordingStop


def _new_id() -> str:
    return str(uuid.uuid4())


@dataclass
class RoomConsent:
    """The room's recording: its id and state, and who agreed.

    Each method returns ``(frames, outputs)``: ``frames`` as ``(participant
    id or None for everyone, frame)`` for the room to send, ``outputs`` for
    the adapter."""

    new_id: Callable[[], str] = _new_id
    state: Literal["off", "asking", "on"] = "off"
    recording_id: str | None = None
    requested_by: str | None = None
    #: Identities that agreed to the current recording.
    agreed: set[str] = field(default_factory=set)
    #: Why the last recording stopped (shown to those who come later).
    last_reason: StopReason | None = None

    # -- views -----------------------------------------------------------------

    def view(self) -> dict[str, Any]:
        """What ``joined`` and ``recording`` frames say of it."""
        out: dict[str, Any] = {"state": self.state, "recording_id": self.recording_id}
        if self.state != "off":
            out["requested_by"] = self.requested_by
        elif self.last_reason is not None:
            out["reason"] = self.last_reason
        return out

    def must_answer(self, voter: Voter) -> bool:
        """True while ``voter`` has not agreed to a recording under way: it
        is asked and may not publish until it answers."""
        return self.state != "off" and voter.counts and voter.identity not in self.agreed

    # -- inputs ----------------------------------------------------------------

    def request(
        self, by: Voter, present: Iterable[Voter]
    ) -> tuple[list[tuple[str | None, dict[str, Any]]], list[RecordingOutput]]:
        """``by`` (who may record: the room checked) asks to record."""
        if self.state != "off":
            raise errors.BadState(f"a recording is already {self.state}")
        self.recording_id = self.new_id()
        self.state = "asking"
        self.requested_by = by.id
        self.agreed = {by.identity}
        self.last_reason = None
        outputs: list[RecordingOutput] = [
            RecordingAsked(self.recording_id, by),
            ConsentAnswered(self.recording_id, by, True),
        ]
        frames, more = self._settle(present, announce=True)
        return frames, outputs + more

    def stop(
        self, by: Voter
    ) -> tuple[list[tuple[str | None, dict[str, Any]]], list[RecordingOutput]]:
        """``by`` (who may record: the room checked) stops the recording
        (asking or on)."""
        if self.state == "off":
            raise errors.BadState("nothing is being recorded")
        return self._off("stopped", by=by.id)

    def answer(
        self, voter: Voter, recording_id: str, agree: bool, present: Iterable[Voter]
    ) -> tuple[list[tuple[str | None, dict[str, Any]]], list[RecordingOutput]]:
        """``voter`` answers the question about ``recording_id``."""
        if self.state == "off" or recording_id != self.recording_id:
            raise errors.BadState("that recording is not being asked about")
        assert self.recording_id is not None
        answered: list[RecordingOutput] = [ConsentAnswered(self.recording_id, voter, agree)]
        if not agree:
            frames, outputs = self._off("refused", by=voter.id)
            return frames, answered + outputs
        self.agreed.add(voter.identity)
        frames, outputs = self._settle(present, announce=False)
        return frames, answered + outputs

    def arrived(
        self, voter: Voter
    ) -> tuple[list[tuple[str | None, dict[str, Any]]], list[RecordingOutput]]:
        """``voter`` is now in the room (joined, admitted, resumed): asked if
        it has not agreed."""
        if not self.must_answer(voter):
            return [], []
        return [(voter.id, self._ask_frame())], []

    def departed(
        self, present: Iterable[Voter]
    ) -> tuple[list[tuple[str | None, dict[str, Any]]], list[RecordingOutput]]:
        """Someone left: those still undecided may be none now."""
        if self.state != "asking":
            return [], []
        return self._settle(present, announce=False)

    def failed(
        self, recording_id: str, detail: str
    ) -> tuple[list[tuple[str | None, dict[str, Any]]], list[RecordingOutput]]:
        """The media side could not record ``recording_id`` (storage too slow,
        no booking to keep it under). Ignored for a recording already over."""
        if self.state == "off" or recording_id != self.recording_id:
            return [], []
        return self._off("failed", detail=detail)

    def close(self) -> list[RecordingOutput]:
        """The room is over: a recording under way stops (reason ``stopped``)."""
        if self.state == "off":
            return []
        return self._off("stopped")[1]

    # -- snapshots ---------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "recording_id": self.recording_id,
            "requested_by": self.requested_by,
            "agreed": sorted(self.agreed),
            "last_reason": self.last_reason,
        }

    def restore(self, data: dict[str, Any]) -> None:
        state = data.get("state", "off")
        self.state = state if state in ("off", "asking", "on") else "off"
        self.recording_id = data.get("recording_id")
        self.requested_by = data.get("requested_by")
        self.agreed = set(data.get("agreed", ()))
        reason = data.get("last_reason")
        self.last_reason = reason if reason in ("stopped", "refused", "failed") else None

    # -- helpers ---------------------------------------------------------------

    def _ask_frame(self) -> dict[str, Any]:
        return {
            "type": "recording_asked",
            "recording_id": self.recording_id,
            "requested_by": self.requested_by,
        }

    def _state_frame(self, **extra: Any) -> dict[str, Any]:
        return {"type": "recording", **self.view(), **extra}

    def _settle(
        self, present: Iterable[Voter], *, announce: bool
    ) -> tuple[list[tuple[str | None, dict[str, Any]]], list[RecordingOutput]]:
        present = list(present)
        undecided = [v for v in present if v.counts and v.identity not in self.agreed]
        frames: list[tuple[str | None, dict[str, Any]]] = []
        outputs: list[RecordingOutput] = []
        if self.state == "asking" and not undecided:
            assert self.recording_id is not None
            self.state = "on"
            outputs.append(RecordingStart(self.recording_id))
            announce = True
        if announce:
            frames.append((None, self._state_frame()))
            frames += [(v.id, self._ask_frame()) for v in undecided]
        return frames, outputs

    def _off(
        self, reason: StopReason, *, by: str | None = None, detail: str = ""
    ) -> tuple[list[tuple[str | None, dict[str, Any]]], list[RecordingOutput]]:
        assert self.recording_id is not None
        stop = RecordingStop(self.recording_id, reason, started=self.state == "on", detail=detail)
        self.state = "off"
        self.agreed = set()
        self.last_reason = reason
        extra: dict[str, Any] = {"reason": reason}
        if by is not None:
            extra["by"] = by
        return [(None, self._state_frame(**extra))], [stop]
