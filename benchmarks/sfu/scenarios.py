"""The SFU benchmark's scenarios: what one room holds, and what a switch run's tiles ask for."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scenario:
    name: str
    publishers: int  # per room
    subscribers: int  # per room, receive only; with mesh, every publisher also receives
    mesh: bool = False
    simulcast: bool = False
    sent: str = "qhf"  # the simulcast layers the publisher sends (it offers all three)
    audio: str = ""  # an audio track besides: "opus", or "red" (RFC 2198 over Opus)

    @property
    def tracks(self) -> int:
        """Tracks per publisher."""
        return 2 if self.audio else 1

    @property
    def fanout(self) -> int:
        return self.publishers - 1 if self.mesh else self.subscribers

    @property
    def streams_out(self) -> int:
        """Forwarded streams per room: publisher tracks times their subscribers."""
        return self.publishers * self.fanout


SCENARIOS = {
    "1x10": Scenario("1x10", 1, 10),
    "4x4": Scenario("4x4", 4, 0, mesh=True),
    "1x50": Scenario("1x50", 1, 50),
    "1x10s": Scenario("1x10s", 1, 10, simulcast=True),
    "1x10sd": Scenario("1x10sd", 1, 10, simulcast=True, sent="qf"),
    "1x10a": Scenario("1x10a", 1, 10, audio="opus"),
    "1x10r": Scenario("1x10r", 1, 10, audio="red"),
}
#: Tile sizes a switch run alternates between, and the layer (RID) each gets.
SMALL_VIEW, LARGE_VIEW = (160, 90, "q"), (1280, 720, "f")
