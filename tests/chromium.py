"""Headless Chromium as a WebRTC test peer: where it is and the flags a loopback
call needs (../shared/TESTING.md explains each; without
--allow-loopback-in-peer-connection it offers no 127.0.0.1 candidate)."""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--mute-audio",
]


def trust(home: Path, certificate: Path, *, ca: bool) -> None:
    """Make a Chromium started with ``HOME=home`` trust ``certificate``: a CA
    that signs servers' certificates (``ca``), or one server's own
    self-signed certificate. Chromium on Linux takes what a user trusts from
    the NSS database ``~/.pki/nssdb`` (``certutil``, Debian's libnss3-tools),
    and checks a ``turns:`` relay's certificate against it as it checks a web
    site's, name included; without it, no relay candidate (docs/turn.md)."""
    if shutil.which("certutil") is None:
        pytest.skip("needs certutil (libnss3-tools)")
    db = home / ".pki" / "nssdb"
    db.mkdir(parents=True, exist_ok=True)
    run = functools.partial(subprocess.run, check=True, capture_output=True)
    if not (db / "cert9.db").exists():
        run(["certutil", "-N", "-d", f"sql:{db}", "--empty-password"])
    flags = "C,," if ca else "P,,"  # trusted to issue server certificates / a trusted server
    run(["certutil", "-A", "-d", f"sql:{db}", "-n", certificate.stem, "-t", flags,
         "-i", str(certificate)])  # fmt: skip
