"""``python -m wadud_client``: see :mod:`wadud_client.cli`."""

from __future__ import annotations

import sys

from wadud_client.cli import main

if __name__ == "__main__":
    sys.exit(main())
