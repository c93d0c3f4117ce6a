"""Relay links between media workers: the worker's side of :mod:`sfu.relay`.

Work in progress: the interface signalling calls is in place
(:meth:`WorkerLinks.relay_send`, :meth:`WorkerLinks.relay_receive`); the
media plane lands next.
"""

from __future__ import annotations

from collections.abc import Sequence

from sfu.control import RelayedTrack, RelayPeer
from sfu.errors import SfuStateError

__all__ = ["WorkerLinks"]


class WorkerLinks:
    """The relay-link half of :class:`sfu.worker.MediaWorker`."""

    worker_id: str
    _fingerprint: str

    def relay_identity(self) -> tuple[str, str]:
        """This worker's id and DTLS fingerprint, ``"sha-256 AB:CD:..."`` (RFC 8122 section 5)."""
        return self.worker_id, f"sha-256 {self._fingerprint}"

    async def relay_send(
        self, room: str, peer: RelayPeer, track_ids: Sequence[str]
    ) -> list[RelayedTrack]:
        raise SfuStateError("relay links are not implemented yet")

    async def relay_receive(
        self, room: str, peer: RelayPeer, tracks: Sequence[RelayedTrack]
    ) -> None:
        raise SfuStateError("relay links are not implemented yet")
