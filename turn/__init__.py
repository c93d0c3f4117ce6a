"""Wadud's TURN/STUN relay (RFC 8656 over RFC 8489), UDP, TCP and TLS.

``turn.core`` is the sans-I/O server (its parts: ``turn.allocator``, the
allocation requests; ``turn.datapath``, Send and Data indications and the
bandwidth budget; ``turn.timers``), ``turn.aio`` its asyncio adapter,
``turn.cli`` the ``wadud turn`` command; see docs/turn.md.
"""

from __future__ import annotations
