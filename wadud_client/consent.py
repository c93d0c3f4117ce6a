"""Consent freshness (RFC 7675) for our peer connections, kept by when the
last answer came rather than by each check's own deadline.

aioice checks consent every ``CONSENT_INTERVAL`` (5 s) with one STUN
request that fails unless its answer is read within 0.5 s, and closes the
connection after ``CONSENT_FAILURES`` (6) such failures in a row. A client
whose event loop runs more than half a second late for half a minute (a
starved process: many participants in one, a busy phone bridge) so drops a
path that answers every check: beside eight CPU burners, every aiortc
connection of tests/signalling/test_region_cut.py's client host closed 33
to 35 s after it connected, and its media started over.

RFC 7675 (section 5.1) has consent expire 30 s after the last answer to any
check. Here each check waits for its answer (retransmitted as STUN does,
RFC 8489 section 6.2.1) while the next ones go out, and the connection
closes once nothing answered for ``CONSENT_INTERVAL * CONSENT_FAILURES``:
aioice's own figures, read each time, so a dead path is still noticed
within the same 30 s (and a test that shortens them still shortens this).
"""

from __future__ import annotations

import asyncio
import logging
import random
import weakref
from collections import Counter
from typing import Any

import aioice.ice
from aioice import stun

log = logging.getLogger(__name__)

__all__ = ["keep"]

#: STUN retransmissions of a check (aioice's RTO of 0.5 s, doubled each
#: time): an answer read up to 7.5 s after the check still counts.
RETRANSMISSIONS = 3

#: The aioice connections whose consent is ours already.
_kept: weakref.WeakSet[Any] = weakref.WeakSet()


def keep(pc: Any) -> None:
    """Take consent over on each of ``pc``'s ICE connections that started
    aioice's own (its ICE completed); the others are left as they are."""
    for connection in _connections(pc):
        task = getattr(connection, "_query_consent_task", None)
        if task is None or task.done() or connection in _kept:
            continue
        task.cancel()
        _kept.add(connection)
        # Where aioice keeps its own: its close() cancels and awaits ours.
        connection._query_consent_task = asyncio.create_task(_consent(connection), name="consent")


def _connections(pc: Any) -> list[Any]:
    """The aioice connections under ``pc``'s transceivers (one when bundled)."""
    found: list[Any] = []
    for transceiver in pc.getTransceivers():
        for end in (transceiver.sender, transceiver.receiver):
            ice = getattr(getattr(end, "transport", None), "transport", None)
            connection = getattr(ice, "_connection", None)
            if connection is not None and connection not in found:
                found.append(connection)
    return found


async def _consent(connection: Any) -> None:
    loop = asyncio.get_running_loop()
    # ICE has just completed: its last check was answered now.
    answered = loop.time()
    checks: set[asyncio.Task[None]] = set()
    #: How the checks since the last answer ended, for the log at expiry.
    missed: Counter[str] = Counter()

    async def check(pair: Any) -> None:
        nonlocal answered
        request = connection.build_request(pair, nominate=False)
        try:
            await pair.protocol.request(
                request,
                pair.remote_addr,
                integrity_key=connection.remote_password.encode("utf8"),
                retransmissions=RETRANSMISSIONS,
            )
        except stun.TransactionFailed as exc:
            # An error answer is no consent (RFC 7675 section 5.1).
            missed[f"error {exc.response.error_code}"] += 1
            return
        except (stun.TransactionError, ConnectionError, OSError) as exc:
            missed[type(exc).__name__] += 1
            return
        answered = max(answered, loop.time())
        missed.clear()

    try:
        while True:
            interval = aioice.ice.CONSENT_INTERVAL
            # Randomized as aioice does (and RFC 7675 section 5.1 asks).
            await asyncio.sleep(interval * (0.8 + 0.4 * random.random()))
            silent = loop.time() - answered
            if silent >= interval * aioice.ice.CONSENT_FAILURES:
                log.info(
                    "consent to send expired: no answer for %.1f s from %s (%s)",
                    silent,
                    [pair.remote_addr for pair in connection._nominated.values()],
                    ", ".join(f"{n} {why}" for why, n in missed.items()) or "no check ended",
                )
                connection._query_consent_task = None
                await connection.close()
                return
            for pair in list(connection._nominated.values()):
                task = asyncio.create_task(check(pair))
                checks.add(task)
                task.add_done_callback(checks.discard)
    finally:
        for task in list(checks):
            task.cancel()
