"""Errors of the ``sfu`` package.

One root, :class:`SfuError`. As in ``rtc``, "a peer sent something broken"
(counted and dropped, also a ``ValueError``) is kept apart from "we were asked
to do something invalid" (a bug in the caller, also an ``AssertionError``).
"""

from __future__ import annotations


class SfuError(Exception):
    """Root of every error raised by ``sfu``."""


class SfuPacketError(SfuError, ValueError):
    """A packet from a peer that the worker cannot forward (malformed RTP, RFC 3550 5.1)."""


class SfuStateError(SfuError, AssertionError):
    """The routing table was asked for something it does not have or already has."""


class UnknownInput(SfuError, TypeError):
    """A worker core was handed an input it does not take (:mod:`sfu.rooms.inputs`):
    a bug in the caller."""


class WorkerStartError(SfuError):
    """A media worker process could not start (its UDP port taken, ...); the
    message names what and where, for the node's log and ``/readyz``."""
