"""Remove what the receiving side added, before any feature is computed.

A message as stored by a mailbox or an archive carries the marks of the site
that received it: its own ``Received`` and ``Delivered-To`` lines, its spam
filter's ``X-*`` verdicts, the mbox ``From`` line, mailing-list headers and
footers. A model that sees them learns *where* a message was collected, not
whether it is phishing, and those marks differ on every site phishgate runs.
Features are therefore computed only from what the sender wrote, and this
module is shared by serving and training so both see the same thing.
"""

from __future__ import annotations

import re

__all__ = [
    "SENDER_X_HEADERS",
    "header_end",
    "strip_list_footers",
    "strip_site_headers",
]

# X- headers a sender's own client or webmail writes; every other X- header
# is treated as added by a receiving site (spam verdicts, archive ids).
SENDER_X_HEADERS = frozenset(
    {b"x-mailer", b"x-priority", b"x-msmail-priority", b"x-mimeole"}
)

# Headers a receiving MTA, mailbox or mailing-list manager adds.
_SITE_HEADERS = frozenset(
    {
        b"received",
        b"delivered-to",
        b"x-original-to",
        b"authentication-results",
        b"received-spf",
        b"return-receipt-to",
        b"precedence",
        b"errors-to",
        b"mailing-list",
        b"sender",
        b"status",
        b"content-length",
        b"lines",
        b"approved",
        b"envelope-to",
        b"x-envelope-to",
        b"resent-to",
        b"resent-from",
        b"resent-date",
        b"resent-message-id",
    }
)
_SITE_PREFIXES = (b"list-", b"arc-")


def header_end(raw: bytes) -> int:
    """Where the blank line after the header block starts, or -1 if none.

    The first empty line, with CRLF or LF line ends as they come. Two
    ``find`` calls: first for the line end the first line uses, then for
    the other one only up to where the first search stopped, so a message
    is read past its header block only when it has no blank line at all.
    """
    first = raw.find(b"\n")
    if first < 0:
        return -1
    crlf = first > 0 and raw[first - 1] == 0x0D
    end = -1
    for separator in (b"\n\r\n", b"\n\n") if crlf else (b"\n\n", b"\n\r\n"):
        found = raw.find(separator, 0, len(raw) if end < 0 else end + 2)
        if found >= 0:
            start = found - 1 if found and raw[found - 1] == 0x0D else found
            if end < 0 or start < end:
                end = start
    return end


def strip_site_headers(raw: bytes) -> tuple[bytes, list[str]]:
    """Drop the mbox line and receiving-site headers from the header block.

    Returns the stripped message and the ``Authentication-Results`` values,
    which the caller may trust for configured ``authserv-id``s only.
    """
    end = header_end(raw)
    head, body = (raw, b"") if end < 0 else (raw[:end], raw[end:])
    lines = head.split(b"\n")
    if lines and lines[0].startswith(b"From "):
        lines = lines[1:]
    kept: list[bytes] = []
    auth: list[bytes] = []
    keep = in_auth = True
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if keep:
                kept.append(line)
            elif in_auth:
                auth[-1] += b" " + line.strip()
            continue
        keep = _keep_header(line)
        in_auth = not keep and _is_auth(line)
        if keep:
            kept.append(line)
        elif in_auth:
            auth.append(line.strip())
    results = [a.split(b":", 1)[1].decode("utf-8", "replace").strip() for a in auth]
    return b"\n".join(kept) + body, results


def _is_auth(line: bytes) -> bool:
    return line[:23].lower() == b"authentication-results:"


def _keep_header(line: bytes) -> bool:
    colon = line.find(b":")
    if colon <= 0:
        return True
    name = line[:colon].strip().lower()
    if name in _SITE_HEADERS or name.startswith(_SITE_PREFIXES):
        return False
    if name.startswith(b"x-"):
        return name in SENDER_X_HEADERS
    return True


_RULE = "_" * 20
_GROUPS = "You received this message because you are subscribed to"

# Footers that a mailing-list manager appends to every post, in the order
# they are removed, each with a fixed string it cannot match without: a
# pattern is a scan of the whole body, and most bodies have neither.
_FOOTERS: tuple[tuple[str, re.Pattern[str]], ...] = (
    # The same footers quoted in a reply ("> Cake mailing list").
    (
        _RULE,
        re.compile(
            r"^(?:>\s?)+_{20,}\s*\n(?:>\s?)+[^\n]*mailing list\s*\n"
            r"(?:(?:>\s?)+[^\n]*\n?){0,3}",
            re.M | re.I,
        ),
    ),
    (
        _GROUPS,
        re.compile(
            r"--\s*\n\s*You received this message because you are subscribed"
            r" to the Google Groups.*",
            re.S,
        ),
    ),
    (_GROUPS, re.compile(_GROUPS + r".*", re.S)),
    (_RULE, re.compile(r"_{20,}\s*\n[^\n]*mailing list\s*\n.*", re.S | re.I)),
)


def strip_list_footers(text: str) -> str:
    """Remove mailing-list footers (Google Groups, Mailman) from body text."""
    for needle, pattern in _FOOTERS:
        if needle in text:
            text = pattern.sub("", text)
    return text
