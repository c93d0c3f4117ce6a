"""The DTLS certificates of the tests' two sides, made once at a fixed time so a
test does not depend on the clock: the client's (a browser stand-in) and the
server's (our endpoint, or the worker)."""

from __future__ import annotations

import datetime

from rtc.dtls import DtlsCertificate

ISSUED = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
CLIENT_CERT = DtlsCertificate.generate(ISSUED)
SERVER_CERT = DtlsCertificate.generate(ISSUED)
