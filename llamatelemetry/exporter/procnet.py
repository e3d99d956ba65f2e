"""Find which local process listens on a TCP port, from ``/proc`` (Linux only, no psutil).

Used to attribute GPU memory to a llama-server target: NVML lists the PIDs using each GPU,
and we check which of those PIDs owns the socket listening on the target's port. Checking
only the candidate PIDs (a handful of GPU processes) keeps this cheap, instead of walking
every ``/proc/*/fd`` on the machine at each scrape.

Reading another user's ``/proc/<pid>/fd`` needs the same user or root; when it is not
readable the PID is simply not matched (no error).

Example::

    inodes = listening_inodes(8080)            # {123456, ...}; empty when nothing listens
    pid = find_listener_pid(8080, candidate_pids=[4242, 4343])
"""

from __future__ import annotations

import ipaddress
import os
from typing import Iterable

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's "st" column


def _local_addresses_match(hex_addr: str, wanted: set[str] | None) -> bool:
    if wanted is None:
        return True
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    try:
        if len(hex_addr) == 8:  # IPv4, little-endian per 32-bit word
            ip = ipaddress.IPv4Address(bytes.fromhex(hex_addr)[::-1])
        else:  # IPv6: four little-endian 32-bit words
            raw = bytes.fromhex(hex_addr)
            ip = ipaddress.IPv6Address(b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))
    except ValueError:
        return False
    if ip.is_unspecified:
        return True  # 0.0.0.0 / :: listens on every address, including the wanted one
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(ip) in wanted or (mapped is not None and str(mapped) in wanted)


def listening_inodes(port: int, addresses: Iterable[str] | None = None, proc: str = "/proc") -> set[int]:
    """Socket inodes of TCP sockets listening on ``port`` (optionally only on one of ``addresses``)."""
    wanted = set(addresses) if addresses is not None else None
    found: set[int] = set()
    for table in ("net/tcp", "net/tcp6"):
        try:
            with open(os.path.join(proc, table), encoding="ascii", errors="replace") as fh:
                next(fh, None)  # header
                for row in fh:
                    cols = row.split()
                    if len(cols) < 10 or cols[3] != _LISTEN:
                        continue
                    addr, _, port_hex = cols[1].partition(":")
                    if int(port_hex, 16) == port and _local_addresses_match(addr, wanted):
                        found.add(int(cols[9]))
        except (OSError, ValueError):
            continue
    return found


def pid_owns_inode(pid: int, inodes: set[int], proc: str = "/proc") -> bool:
    """True when one of ``pid``'s file descriptors is a socket with an inode in ``inodes``."""
    fd_dir = os.path.join(proc, str(pid), "fd")
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return False
    for fd in names:
        try:
            link = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
        if link.startswith("socket:[") and int(link[8:-1]) in inodes:
            return True
    return False


def find_listener_pid(port: int, candidate_pids: Iterable[int], addresses: Iterable[str] | None = None, proc: str = "/proc",
                      inodes: set[int] | None = None) -> int | None:
    """The PID among ``candidate_pids`` that listens on ``port``, or ``None``.

    ``inodes``: the port's listening socket inodes when the caller already read them (see :func:`listening_inodes`).
    """
    if inodes is None:
        inodes = listening_inodes(port, addresses, proc)
    if not inodes:
        return None
    for pid in candidate_pids:
        if pid_owns_inode(pid, inodes, proc):
            return pid
    return None


def process_name(pid: int, proc: str = "/proc") -> str | None:
    """The short command name of ``pid`` (``/proc/<pid>/comm``), or ``None`` when unknown."""
    try:
        with open(os.path.join(proc, str(pid), "comm"), encoding="utf-8", errors="replace") as fh:
            return fh.read().strip() or None
    except OSError:
        return None
