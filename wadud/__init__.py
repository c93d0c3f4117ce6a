"""Shared plumbing of every Wadud role: configuration, errors, logging,
metrics, the database pool and migrations, the bus and outbox, tokens, and the
aiohttp application assembly."""

from __future__ import annotations

__version__ = "0.1.0"
