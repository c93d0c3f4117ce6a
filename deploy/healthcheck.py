#!/opt/wadud/bin/python3
"""wadud-healthcheck [URL]: exit 0 when URL answers, 1 otherwise; the image's
HEALTHCHECK and the compose file's use it (no shell quoting to get wrong).

URL is http://HOST:PORT/PATH (a 2xx answer is healthy: /healthz, /readyz) or
tcp://HOST:PORT (a TCP connection is accepted: the TURN relay). Without URL:
$HEALTHCHECK_URL.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.error
import urllib.request
from urllib.parse import urlsplit


def main() -> int:
    url = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("HEALTHCHECK_URL", "")
    parts = urlsplit(url)
    try:
        if parts.scheme == "tcp" and parts.hostname and parts.port:
            socket.create_connection((parts.hostname, parts.port), timeout=2).close()
            return 0
        with urllib.request.urlopen(url, timeout=2) as answer:
            return 0 if 200 <= answer.status < 300 else 1
    except (OSError, ValueError, urllib.error.URLError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
