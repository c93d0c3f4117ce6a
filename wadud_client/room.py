"""What one participant knows of its call, from the server's frames: its
own place (participant, session, where it stands), who else is in the room,
every published track, who waits for admission and who speaks.

:meth:`RoomView.apply` takes one server frame and :meth:`RoomView.socket_closed`
the signalling socket's close code; neither does any I/O.
"""

from __future__ import annotations

from typing import Any, Literal

__all__ = ["RoomView", "State"]

#: ``new`` → ``waiting`` → ``joined`` → ``closed``; ``disconnected`` when the
#: socket dropped without the server ending our stay.
State = Literal["new", "waiting", "joined", "disconnected", "closed"]

# Server frames that end the participant's time in the room; the server closes
# the socket right after them.
_FINAL = {"denied", "removed", "room_ended", "replaced"}
# Close codes after which there is nothing to resume.
_FINAL_CLOSE = {1000, 4401, 4403, 4409, 4410, 4429}


class RoomView:
    """One participant's view of its room, kept from the server's frames."""

    def __init__(self) -> None:
        #: ``new`` → ``waiting`` → ``joined`` → ``closed``; ``disconnected``
        #: when the socket dropped without the server ending our stay (then
        #: resume within the grace period).
        self.state: State = "new"
        self.participant: dict[str, Any] = {}
        self.session: str | None = None
        #: The ICE servers for new peer connections: ``joined``'s, then the
        #: fresh TURN credentials of each ``ice_servers`` frame.
        self.ice_servers: list[dict[str, Any]] = []
        self.ping_interval: float | None = None
        #: Seconds the server keeps our seat once our socket is taken for
        #: dropped (``joined.resume_grace``).
        self.resume_grace: float | None = None
        #: Others in the room, by participant id (as in ``joined.participants``).
        self.participants: dict[str, dict[str, Any]] = {}
        #: Every published track in the room, ours included, by track id.
        self.room_tracks: dict[str, dict[str, Any]] = {}
        #: Who waits for admission (sent to admins only).
        self.waiting: list[dict[str, Any]] = []
        #: Guests waiting for our agreement (a patient's view).
        self.guests_awaiting: list[dict[str, Any]] = []
        #: The room's dominant speaker (participant id), from ``active_speaker``.
        self.active_speaker: str | None = None
        self.require_admission = False
        #: Our published tracks by track id (from ``published.tracks``).
        self.published: dict[str, dict[str, Any]] = {}
        #: Others whose media is reconnecting (``participant_media``), by id.
        self.peer_media: dict[str, str] = {}
        #: The room's recording (``joined.recording``, then ``recording``
        #: frames): ``state`` off, asking or on, and its ``recording_id``.
        self.recording: dict[str, Any] = {"state": "off"}
        #: The recording this participant was asked about and has not
        #: answered (``recording_asked``; ``recording_consent`` answers it).
        self.recording_asked: str | None = None
        #: Whether we may have the phone bridge call the patient (``joined``).
        self.phone_calls = False
        #: Each step of the calls the bridge placed for the room, in order
        #: (``phone_call``, to admins): ``call``, ``state``, maybe ``reason``.
        self.phone_steps: list[dict[str, Any]] = []

    @property
    def participant_id(self) -> str | None:
        pid = self.participant.get("id")
        return str(pid) if pid is not None else None

    def track_id_of(self, source: str) -> str | None:
        """The track id the server gave our ``source`` track."""
        for tid, t in self.published.items():
            if t.get("source") == source:
                return tid
        return None

    def socket_closed(self, code: int | None) -> None:
        """The signalling socket closed with ``code`` (not by us)."""
        # These end our stay (a refusal, `leave`, removal, the room's end...);
        # anything else (the network, a ping timeout, a server restart's 1001)
        # can be resumed within the grace period.
        if self.state != "closed" and code in _FINAL_CLOSE:
            self.state = "closed"
        elif self.state in ("waiting", "joined"):
            self.state = "disconnected"

    def apply(self, kind: str, f: dict[str, Any]) -> None:
        """One frame of type ``kind`` from the server."""
        if kind in ("joined", "waiting") and "participant" in f:
            self.participant = dict(f["participant"])
            session = f.get("session")
            if isinstance(session, str):
                self.session = session
        if kind == "joined":
            self.state = "joined"
            self.ice_servers = list(f.get("ice_servers") or [])
            self.ping_interval = f.get("ping_interval")
            self.resume_grace = f.get("resume_grace")
            me = self.participant_id
            self.participants = {
                str(p["id"]): dict(p) for p in f.get("participants") or [] if p.get("id") != me
            }
            self.room_tracks = {str(t["track_id"]): dict(t) for t in f.get("tracks") or []}
            # After a resume the room's tracks include ours.
            self.published.update(
                (tid, t) for tid, t in self.room_tracks.items() if t.get("participant") == me
            )
            self.waiting = list(f.get("waiting") or [])
            self.guests_awaiting = list(f.get("guests_awaiting") or [])
            self.active_speaker = f.get("active_speaker")
            self.require_admission = bool(f.get("require_admission", False))
            recording = dict(f.get("recording") or {"state": "off"})
            asked = recording.pop("asked", False)
            self.recording = recording
            self.recording_asked = recording.get("recording_id") if asked else None
            self.phone_calls = bool(f.get("phone_calls"))
        elif kind == "ice_servers":
            self.ice_servers = list(f.get("ice_servers") or [])
        elif kind == "recording":
            self.recording = {k: v for k, v in f.items() if k != "type"}
            if self.recording.get("state") == "off":
                self.recording_asked = None
        elif kind == "phone_call":
            self.phone_steps.append({k: v for k, v in f.items() if k not in ("type", "v")})
        elif kind == "recording_asked":
            self.recording_asked = f.get("recording_id")
        elif kind == "waiting":
            if "ref" in f:
                self.state = "waiting"
            if "waiting" in f:
                self.waiting = list(f["waiting"] or [])
        elif kind == "guests_awaiting":
            self.guests_awaiting = list(f.get("guests") or [])
        elif kind == "participant_joined":
            p = dict(f["participant"])
            self.participants[str(p["id"])] = p
        elif kind == "participant_left":
            pid = f.get("participant_id")
            self.participants.pop(str(pid), None)
            self.peer_media.pop(str(pid), None)
            for tid in [k for k, t in self.room_tracks.items() if t.get("participant") == pid]:
                del self.room_tracks[tid]
        elif kind == "track_published":
            t = dict(f["track"])
            self.room_tracks[str(t["track_id"])] = t
        elif kind == "track_unpublished":
            self.room_tracks.pop(str(f.get("track_id")), None)
        elif kind == "participant_media":
            pid = str(f.get("participant_id"))
            if f.get("state") == "reconnecting":
                self.peer_media[pid] = "reconnecting"
            else:
                self.peer_media.pop(pid, None)
        elif kind == "track_muted":
            muted = self.room_tracks.get(str(f.get("track_id")))
            if muted is not None:
                muted["muted"] = bool(f.get("muted"))
        elif kind == "active_speaker":
            self.active_speaker = f.get("participant_id")
        elif kind == "room_settings":
            self.require_admission = bool(f.get("require_admission"))
        elif kind in _FINAL:
            self.state = "closed"
