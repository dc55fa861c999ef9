"""Who is on the other end of a Unix socket: SO_PEERCRED (Linux)."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

_UCRED = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int


UNKNOWN = Peer(-1, -1, -1)


def peer_of(sock: socket.socket | None) -> Peer:
    """The peer's credentials as the kernel recorded them at connect(); UNKNOWN if not a
    Unix socket (the TCP health listener) or not on Linux."""
    if sock is None or sock.family != socket.AF_UNIX or not hasattr(socket, "SO_PEERCRED"):
        return UNKNOWN
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError:
        return UNKNOWN
    return Peer(*_UCRED.unpack(raw))
