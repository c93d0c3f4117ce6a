"""A stop that was asked for (wadud.web.serving): ``wadud api`` given SIGTERM
after its PostgreSQL and Redis were killed, and ``wadud serve`` on its
embedded defaults given SIGINT (Ctrl-C), each exit 0 with no error line and
no traceback from the moment they begin to stop.

The product's bound is 2 s (docs/operations.md, "Shutdown"); the tests allow
more, for a shared machine, and print what each stop took:
benchmarks/stop/run.py measures it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

from tests.wadud.stopping import http_role, peers, stop_with_peers_killed

#: Seconds a test waits for an exit: the product's bound is 2 s.
DEADLINE = 10.0


async def test_api_stops_at_once_when_its_database_and_redis_were_killed(
    tmp_path: Path,
) -> None:
    with peers(tmp_path) as found:
        # No pool floor, and a relay that polls rarely: their retries while
        # the peers are dead would be the outage's log lines, not the stop's.
        api = http_role(
            "api",
            tmp_path,
            found,
            WADUD_DATABASE_POOL_MIN="0",
            WADUD_OUTBOX_POLL_INTERVAL="30",
        )
        code = await stop_with_peers_killed(api, found, DEADLINE)
        print(f"wadud api stopped in {api.stop_seconds:.2f} s after SIGTERM")
        assert code == 0, api.text()[-3000:]
        assert api.bad_lines("wadud.serving: stopping") == [], api.text()[-3000:]
        assert "wadud.serving: stopped" in api.text()


async def test_serve_on_embedded_defaults_stops_on_ctrl_c(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)  # PostgreSQL may run as another user (pgserver, under root)
    serve = http_role("serve", tmp_path, None)
    pidfile = tmp_path / "data" / "postgres" / "postmaster.pid"
    serve.start()
    try:
        await serve.ready()
        code = await serve.stop(signal.SIGINT, DEADLINE)
    finally:
        serve.kill()
        if serve.proc is not None and serve.proc.returncode != 0 and pidfile.exists():
            # A failed start or stop: the cluster is the test's, ended by its pid.
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pidfile.read_text().split()[0]), signal.SIGQUIT)
    print(f"wadud serve stopped in {serve.stop_seconds:.2f} s after SIGINT")
    assert code == 0, serve.text()[-3000:]
    assert serve.bad_lines("wadud.serving: stopping") == [], serve.text()[-3000:]
    assert "stopping embedded PostgreSQL" in serve.text()
    # The embedded cluster stops with it: nobody else used it.
    end = time.monotonic() + DEADLINE
    while pidfile.exists() and time.monotonic() < end:
        pid = int(pidfile.read_text().split()[0])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        await asyncio.sleep(0.05)
    else:
        assert not pidfile.exists(), "the embedded PostgreSQL still runs"
