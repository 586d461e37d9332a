"""Quarantine digests: tell each recipient what was held for them.

One plain-text mail per recipient lists the held messages (time, sender,
subject, score, id) and says how to get one released. Nothing in it is
clickable: sender and subject are defanged (``hxxp[:]//``, ``example[.]com``,
``[at]``), there is no HTML and no part of the held message.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["DigestItem", "defang", "digest_message", "group_by_recipient"]

_SCHEME = re.compile(r"(?i)\b(h)tt(ps?)://")
_OTHER_SCHEME = re.compile(r"(?i)\b(ftp|mailto|javascript|data):")
_DOT = re.compile(r"(?<=[A-Za-z0-9-])\.(?=[A-Za-z0-9-])")
_AT = re.compile(r"@")
MAX_FIELD = 120


def defang(text: str) -> str:
    """Make links, host names and addresses in *text* unclickable."""
    text = " ".join(text.split())[:MAX_FIELD]
    text = _SCHEME.sub(r"\1xx\2[:]//", text)
    text = _OTHER_SCHEME.sub(r"\1[:]", text)
    text = _DOT.sub("[.]", text)
    return _AT.sub("[at]", text)


@dataclass(frozen=True)
class DigestItem:
    """One held message as a digest lists it."""

    id: str
    time: str
    sender: str
    subject: str
    phish: float | None
    where: str


def group_by_recipient(
    entries: Iterable[Mapping[str, Any]],
) -> dict[str, list[DigestItem]]:
    """Held entries (``quarantine list --json`` rows) per recipient, oldest first."""
    groups: dict[str, list[DigestItem]] = {}
    for entry in sorted(entries, key=lambda e: str(e.get("time", ""))):
        item = DigestItem(
            id=str(entry["id"]),
            time=str(entry.get("time", "")),
            sender=str(entry.get("from_header") or entry.get("sender") or ""),
            subject=str(entry.get("subject") or ""),
            phish=entry.get("phish"),
            where=str(entry.get("where", "store")),
        )
        for rcpt in entry.get("recipients") or []:
            groups.setdefault(str(rcpt).lower(), []).append(item)
    return groups


def digest_message(
    recipient: str, items: list[DigestItem], sender: str, retention_days: int
) -> bytes:
    """The digest mail for one recipient (plain text, UTF-8)."""
    lines = [
        f"{len(items)} message(s) addressed to you were held because they look",
        "like phishing. They were not delivered.",
        "",
    ]
    for item in items:
        score = "-" if item.phish is None else f"{item.phish:.2f}"
        lines += [
            f"  {item.time}  score {score}  id {item.id}",
            f"    From:    {defang(item.sender)}",
            f"    Subject: {defang(item.subject)}",
            "",
        ]
    lines += [
        "If one of them is a message you expected, ask your mail administrator",
        "to release it and quote its id. Do not ask the sender to resend it.",
        f"Ask within {retention_days} days: held messages may be deleted after that.",
    ]
    domain = sender.rpartition("@")[2] or "localhost"
    head = (
        f"From: {sender}\r\nTo: {recipient}\r\n"
        f"Subject: {len(items)} message(s) held for you\r\n"
        f"Date: {email.utils.formatdate(localtime=False)}\r\n"
        f"Message-ID: {email.utils.make_msgid(domain=domain)}\r\n"
        "Auto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
    )
    return (head + "\r\n".join(lines) + "\r\n").encode("utf-8", "replace")
