"""Which process a run lives in, and whether that process still lives.

A run records the process that runs it (`this_process`): host, the host's boot, pid,
the process's start time and its pid namespace. A pid alone is not enough: after the
process dies the kernel may give its number to another one, after a reboot every number
starts over, and in another pid namespace (another container) the same number is
another process. So `is_alive` says a process lives only when the same host, in the
same boot and namespace, has a process of that pid that started at that very tick, and
says it cannot tell (None) for a process of another host or namespace.

Example:
    >>> me = this_process()
    >>> is_alive(me)
    True
    >>> is_alive(dataclasses.replace(me, started=me.started + 1))  # the pid, reused
    False
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
PID_NAMESPACE = Path("/proc/self/ns/pid")


@dataclass(frozen=True)
class ProcessIdentity:
    host: str
    boot_id: str | None  # None where the system does not say (not Linux)
    pid: int
    started: int | None  # clock ticks after boot (/proc/<pid>/stat field 22)
    pid_namespace: str | None = None  # e.g. 'pid:[4026531836]'


def start_ticks(pid: int) -> int | None:
    """When process `pid` started, in clock ticks after boot; None when there is no such
    process, or only its zombie (it has exited; its parent has not reaped it yet)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: fields follow the last ')'
    fields = text[text.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # zombie or dead
        return None
    return int(fields[19])


def boot_id() -> str | None:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return None


def pid_namespace() -> str | None:
    try:
        return os.readlink(PID_NAMESPACE)
    except OSError:
        return None


def this_process() -> ProcessIdentity:
    pid = os.getpid()
    return ProcessIdentity(socket.gethostname(), boot_id(), pid, start_ticks(pid), pid_namespace())


def is_alive(process: ProcessIdentity) -> bool | None:
    """True or False for a process of this host; None when it cannot be told from here
    (another host or pid namespace, or a system without /proc)."""
    if process.host != socket.gethostname() or process.boot_id is None:
        return None
    here = boot_id()
    if here is None:
        return None
    if process.boot_id != here:
        return False  # the host rebooted since: every process of that boot is gone
    if process.pid_namespace is None or process.pid_namespace != pid_namespace():
        return None  # another container's pid is not one this /proc shows
    return process.started is not None and start_ticks(process.pid) == process.started
