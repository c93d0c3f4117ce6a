"""A DTLS client and server of ``rtc.dtls`` joined in memory, on a fake clock
by default (aioquic's ``transfer()``): the DTLS tests drive handshakes through
it, and the SRTP tests take their keys from one."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rtc.dtls import DtlsEndpoint, DtlsRole, DtlsState
from tests.rtc.certificates import CLIENT_CERT, SERVER_CERT
from tests.rtc.memory_link import Drop, MemoryLink

__all__ = ["DtlsPair", "dtls_endpoints"]


class DtlsPair(MemoryLink):
    """A DTLS client and server joined by the in-memory link ("c2s" and "s2c")."""

    def __init__(
        self,
        client: DtlsEndpoint,
        server: DtlsEndpoint,
        *,
        drop: Drop | None = None,
        reorder: bool = False,
    ) -> None:
        super().__init__(("c2s", "s2c"), drop)
        self.client, self.server = client, server
        self.reorder = reorder
        # None: a fake clock that jumps to the next timer. Else a real one to sleep on.
        self.clock: Callable[[], float] | None = None
        self.events: dict[str, list[Any]] = {"client": [], "server": []}

    def _move(self, src: DtlsEndpoint, dst: DtlsEndpoint, direction: str) -> bool:
        batch = src.datagrams_to_send()
        if self.reorder:
            batch.reverse()
        for data in batch:
            if self.arrives(direction, data):
                dst.receive(data, self.now)
        return bool(batch)

    def _collect(self) -> None:
        for name, ep in (("client", self.client), ("server", self.server)):
            while (e := ep.next_event()) is not None:
                self.events[name].append(e)

    def pump(self) -> None:
        while self._move(self.client, self.server, "c2s") | self._move(
            self.server, self.client, "s2c"
        ):
            pass
        self._collect()

    def run(self, limit: float = 300.0) -> None:
        """Start both, then move datagrams and fire timers until both settle."""
        if self.clock is not None:
            self.now = self.clock()
            limit += self.now
        for ep in (self.server, self.client):
            if ep.state is DtlsState.NEW:
                ep.start(self.now)
        while True:
            self.pump()
            if all(ep.state is not DtlsState.CONNECTING for ep in (self.client, self.server)):
                return
            timers = [t for t in (self.client.get_timer(), self.server.get_timer()) if t]
            if not timers or self.now > limit:
                return
            if self.clock is None:
                self.now = max(self.now, min(timers))
            else:
                time.sleep(max(0.0, min(timers) - self.clock()))
                self.now = self.clock()
            self.client.handle_timer(self.now)
            self.server.handle_timer(self.now)


def dtls_endpoints(**kwargs: Any) -> tuple[DtlsEndpoint, DtlsEndpoint]:
    """Our client and server, each expecting the other's test certificate;
    ``c_``/``s_`` keyword arguments go to the client's/server's constructor."""
    client_kw = {k[2:]: v for k, v in kwargs.items() if k.startswith("c_")}
    server_kw = {k[2:]: v for k, v in kwargs.items() if k.startswith("s_")}
    client = DtlsEndpoint(
        CLIENT_CERT, DtlsRole.CLIENT, [("sha-256", SERVER_CERT.fingerprint())], **client_kw
    )
    server = DtlsEndpoint(
        SERVER_CERT, DtlsRole.SERVER, [("sha-256", CLIENT_CERT.fingerprint())], **server_kw
    )
    return client, server
