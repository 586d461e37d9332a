"""Run a command under a unit file's seccomp settings, the way systemd 252 would.

    python unit_sandbox.py UNIT_FILE COMMAND [ARG...]

Where no systemd runs as PID 1 (containers, CI), ``systemd-run`` cannot
start the real unit. This applies the parts of its sandbox that can break
a Python program with native libraries (LightGBM, NumPy, OpenMP), from the
unit file itself, then execs the command; children inherit them:

* ``SystemCallFilter=``: an allow list (plus systemd's always-allowed
  ``@default``), later ``~`` lines removing from it; any other system call
  kills the process (SIGSYS) or, with ``SystemCallErrorNumber=``, fails
  with that error, as under systemd.
* ``MemoryDenyWriteExecute=yes``: the seccomp rules systemd installs, so
  ``mmap`` of writable and executable memory, and ``mprotect`` or
  ``pkey_mprotect`` adding execute, fail with EPERM (``shmat`` with
  ``SHM_EXEC`` as well).

Groups are expanded with ``systemd-analyze syscall-filter``; libseccomp is
called through ctypes. The rest of the sandbox (namespaces, read-only
mounts, capabilities) needs systemd itself and is not emulated.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import subprocess
import sys
from pathlib import Path

SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_ERRNO = 0x00050000  # | errno
SCMP_CMP_MASKED_EQ = 7
SHM_EXEC = 0o100000
ALWAYS_ALLOWED = "@default"


class ArgCmp(ctypes.Structure):
    """``struct scmp_arg_cmp`` of seccomp.h."""

    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def syscall_groups() -> dict[str, list[str]]:
    """Every ``@group`` of ``systemd-analyze syscall-filter``, with its members."""
    text = subprocess.run(
        ["systemd-analyze", "syscall-filter"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.strip() and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    """System call names, with groups expanded recursively."""
    out: set[str] = set()
    for name in names:
        out |= expand(groups[name], groups) if name.startswith("@") else {name}
    return out


def unit_settings(unit: Path) -> dict[str, list[str]]:
    """``[Service]`` assignments of the unit, each key's values in order."""
    settings: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith(("#", ";")):
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def allowed_syscalls(filters: list[str], groups: dict[str, list[str]]) -> set[str]:
    """The allow list that systemd builds from SystemCallFilter= lines."""
    allowed = expand([ALWAYS_ALLOWED], groups)
    for entry in filters:
        if entry.startswith("~"):
            allowed -= expand(entry[1:].split(), groups)
        else:
            allowed |= expand(entry.split(), groups)
    return allowed


class Seccomp:
    """One libseccomp filter under construction."""

    def __init__(self, default_action: int) -> None:
        self.lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
        self.lib.seccomp_init.restype = ctypes.c_void_p
        self.lib.seccomp_init.argtypes = [ctypes.c_uint32]
        self.lib.seccomp_rule_add_array.argtypes = [
            ctypes.c_void_p,
            ctypes.c_uint32,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.POINTER(ArgCmp),
        ]
        self.lib.seccomp_load.argtypes = [ctypes.c_void_p]
        self.ctx = self.lib.seccomp_init(default_action)

    def rule(self, action: int, name: str, *conditions: ArgCmp) -> None:
        number = self.lib.seccomp_syscall_resolve_name(name.encode())
        if number < 0:
            return  # not a system call of this architecture
        array = (ArgCmp * max(1, len(conditions)))(*conditions)
        rc = self.lib.seccomp_rule_add_array(
            self.ctx, action, number, len(conditions), array
        )
        if rc < 0:
            raise OSError(-rc, f"seccomp_rule_add {name}")

    def load(self) -> None:
        rc = self.lib.seccomp_load(self.ctx)
        if rc < 0:
            raise OSError(-rc, "seccomp_load")


def deny_write_execute() -> Seccomp:
    """The MemoryDenyWriteExecute= rules, as a filter that allows the rest."""
    wx = mmap.PROT_WRITE | mmap.PROT_EXEC
    x = mmap.PROT_EXEC
    eperm = SCMP_ACT_ERRNO | errno.EPERM
    rules = Seccomp(SCMP_ACT_ALLOW)
    rules.rule(eperm, "mmap", ArgCmp(2, SCMP_CMP_MASKED_EQ, wx, wx))
    rules.rule(eperm, "mprotect", ArgCmp(2, SCMP_CMP_MASKED_EQ, x, x))
    rules.rule(eperm, "pkey_mprotect", ArgCmp(2, SCMP_CMP_MASKED_EQ, x, x))
    rules.rule(eperm, "shmat", ArgCmp(2, SCMP_CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC))
    return rules


def refusal(settings: dict[str, list[str]]) -> int:
    """What a call off the allow list gets: SIGSYS, or SystemCallErrorNumber=."""
    names = settings.get("SystemCallErrorNumber")
    if not names:
        return SCMP_ACT_KILL_PROCESS
    return SCMP_ACT_ERRNO | int(getattr(errno, names[-1]))


def main(argv: list[str]) -> int:
    unit, command = Path(argv[0]), argv[1:]
    settings = unit_settings(unit)
    filters = settings.get("SystemCallFilter", [])
    if filters:
        allow_list = Seccomp(refusal(settings))
        for name in sorted(allowed_syscalls(filters, syscall_groups())):
            allow_list.rule(SCMP_ACT_ALLOW, name)
    if settings.get("MemoryDenyWriteExecute", ["no"])[-1] == "yes":
        deny_write_execute().load()
    if filters:
        allow_list.load()  # last: seccomp(2) itself is not on every allow list
    os.execvp(command[0], command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
