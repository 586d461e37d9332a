"""Header edits on raw message bytes, for front doors that carry the message."""

from __future__ import annotations

from .normalize import header_end
from .pipeline import HEADER_PREFIX

__all__ = ["rewrite_headers"]


def rewrite_headers(
    raw: bytes, add: tuple[tuple[str, str], ...], subject_tag: str = ""
) -> bytes:
    """Drop incoming X-Phishgate-* headers, prefix the Subject, prepend *add*."""
    end = header_end(raw)
    head, rest = (raw, b"") if end < 0 else (raw[:end], raw[end:])
    kept: list[bytes] = []
    skipping = False
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        skipping = line.lower().startswith(HEADER_PREFIX.lower().encode())
        if skipping:
            continue
        if subject_tag and line.lower().startswith(b"subject:"):
            value = line[8:].lstrip()
            if not value.startswith(subject_tag.strip().encode()):
                line = b"Subject: " + subject_tag.encode() + value
        kept.append(line)
    new = b"".join(
        f"{name}: {value}".replace("\n", "\r\n").encode() + b"\r\n"
        for name, value in add
    )
    return new + b"\n".join(kept) + rest
