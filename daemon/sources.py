"""Read messages from the places admins keep them.

A PATH may be one message file, ``-`` for stdin, a directory of message
files, a Maildir, an mbox (optionally gzip'd), or a tar archive (optionally
gzip'd) whose members are messages. Directories may hold mbox and tar files
too. An unreadable item yields an :class:`Item` with ``error`` set; the walk
goes on.
"""

from __future__ import annotations

import gzip
import itertools
import os
import re
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Item", "iter_messages"]

_MBOX_SUFFIXES = (".mbox", ".mbx", ".mbox.gz", ".mbx.gz")
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
# An mbox separator: "From <sender> <asctime date>" (RFC 4155).
_FROM_LINE = re.compile(
    rb"^From \S+\s+(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)\b[^\n]*\d{4}\r?$", re.M
)
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Item:
    """One message read from a PATH, or the error that stopped reading it."""

    source: str
    member: str | None
    raw: bytes | None = None
    error: str | None = None

    @property
    def name(self) -> str:
        return self.source if self.member is None else f"{self.source}:{self.member}"


def iter_messages(path: str) -> Iterator[Item]:
    """Yield every message found at *path*, in a stable order."""
    if path == "-":
        yield Item("-", None, sys.stdin.buffer.read())
        return
    p = Path(path)
    if p.is_dir():
        yield from _iter_dir(p)
    elif p.exists():
        yield from _iter_file(p)
    else:
        yield Item(path, None, error="no such file or directory")


def _iter_dir(root: Path) -> Iterator[Item]:
    if (root / "cur").is_dir() and (root / "new").is_dir():
        for sub in ("new", "cur"):
            yield from _iter_plain_files(root / sub)
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if not name.startswith("."):
                yield from _iter_file(Path(dirpath) / name)


def _iter_plain_files(folder: Path) -> Iterator[Item]:
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and not entry.name.startswith("."):
            yield _read_one(entry)


def _iter_file(p: Path) -> Iterator[Item]:
    name = p.name.lower()
    try:
        if name.endswith(_TAR_SUFFIXES):
            yield from _iter_tar(p)
            return
        if name.endswith(_MBOX_SUFFIXES):
            yield from _iter_mbox(p, _read_bytes(p))
            return
        data = _read_bytes(p)
    except (OSError, EOFError, tarfile.TarError, gzip.BadGzipFile) as exc:
        yield Item(str(p), None, error=f"unreadable: {exc}")
        return
    if len(_FROM_LINE.findall(data[:1_000_000])) > 1:
        yield from _iter_mbox(p, data)
    else:
        yield Item(str(p), None, data)


def _read_one(p: Path) -> Item:
    try:
        return Item(str(p), None, _read_bytes(p))
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        return Item(str(p), None, error=f"unreadable: {exc}")


def _read_bytes(p: Path) -> bytes:
    with p.open("rb") as fh:
        head = fh.read(2)
        fh.seek(0)
        if head == b"\x1f\x8b":
            with gzip.open(fh) as gz:
                return gz.read(MAX_MESSAGE_BYTES * 16)
        return fh.read()


def _iter_tar(p: Path) -> Iterator[Item]:
    with tarfile.open(p, "r:*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            try:
                fh = tar.extractfile(member)
                data = fh.read(MAX_MESSAGE_BYTES) if fh is not None else b""
            except (OSError, tarfile.TarError) as exc:
                yield Item(str(p), member.name, error=f"unreadable: {exc}")
                continue
            yield Item(str(p), member.name, data)


def _iter_mbox(p: Path, data: bytes) -> Iterator[Item]:
    starts = [m.start() for m in _FROM_LINE.finditer(data)]
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    starts.append(len(data))
    for index, (begin, end) in enumerate(itertools.pairwise(starts)):
        chunk = data[begin:end]
        if chunk.strip():
            yield Item(str(p), f"#{index}", chunk)
