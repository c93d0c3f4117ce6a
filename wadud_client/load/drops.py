"""What the kernel dropped on UDP sockets, their receive buffers full: the
last column of /proc/net/udp (and udp6), by socket inode. The load tester
tells the loss its own late reading caused from the deployment's by it; the
tests that count datagrams do the same for their own process. Linux only:
elsewhere nothing is read, and nothing is said to be dropped."""

from __future__ import annotations

import os
import socket
from pathlib import Path

__all__ = ["inode_of", "udp_drops"]


def inode_of(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def udp_drops(inodes: set[int] | None = None) -> dict[int, int]:
    """Drops so far per socket inode (all sockets, or those of ``inodes``)."""
    out: dict[int, int] = {}
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            inode = int(fields[9])
            if inodes is None or inode in inodes:
                out[inode] = int(fields[-1])
    return out
