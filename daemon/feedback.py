"""Reports sent to the feedback addresses: users tell us what we got wrong.

A report is recognised by its recipient (``[feedback] phish_address`` or
``ham_address``). Each reported original is taken from a ``message/rfc822``
attachment (or an attached ``.eml``), several per report; failing that, from
an inline forward (the quoted header block and the text after it), marked
``inline`` because the headers and HTML are lost.

Anyone can mail a report address, so a report counts only if:

* the client authenticated (SASL login) or connected from
  ``[feedback] trusted_networks``;
* the reporter has not sent more than ``rate_limit_per_hour`` originals in
  the last hour;
* when the original is in the verdict log (found by Message-ID, else by
  :func:`~.message.content_fingerprint`), the reporter was one of its
  recipients; an original not in the log counts unless
  ``accept_unmatched = false``.

Each accepted original is stored raw as a ``user-report`` label, linked to
its verdict row; admin labels still win over it at retraining. This module
does the blocking work (parsing, SQLite) and is called off the event loop.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.utils
import hashlib
import ipaddress
import itertools
import json
import logging
import quopri
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from email.policy import compat32
from pathlib import Path

from selectolax.lexbor import LexborHTMLParser

from .config import FeedbackConfig, network_list
from .labels import LabelInfo, open_labels, record_label
from .message import content_fingerprint, parse_message

__all__ = [
    "REFUSALS",
    "Original",
    "ReportDesk",
    "ReportResult",
    "extract_originals",
    "receipt",
]

log = logging.getLogger(__name__)

REFUSALS = {
    "unauthenticated": (
        "reports are accepted only from authenticated users and trusted networks"
    ),
    "rate-limited": "too many reports in the last hour",
    "no-original": "no forwarded message found; forward it as an attachment",
    "not-recipient": "you were not a recipient of the reported message",
    "unmatched": "the reported message is not in the log",
}
"""Why a report was refused (the metric label) -> what the reporter is told."""

MAX_ORIGINALS = 10
MAX_DEPTH = 8
SOURCE = "user-report"


@dataclass(frozen=True)
class Original:
    """A reported message as recovered from the report."""

    raw: bytes
    confidence: str  # attachment | inline


@dataclass(frozen=True)
class ReportResult:
    """What became of one report."""

    label: str
    reporter: str
    reason: str = ""
    """Empty when accepted; else a key of :data:`REFUSALS`."""
    label_ids: tuple[int, ...] = ()
    matched_by: tuple[str, ...] = ()
    subjects: tuple[str, ...] = ()

    @property
    def accepted(self) -> bool:
        return not self.reason

    @property
    def summary(self) -> str:
        if self.reason:
            return f"refused ({self.reason})"
        return f"accepted label={self.label} originals={len(self.matched_by)}"


class ReportDesk:
    """Checks reports and records their originals as labels (blocking calls)."""

    def __init__(
        self, state_dir: Path, feedback: FeedbackConfig, subject_tag: str = ""
    ) -> None:
        self.state_dir = state_dir
        self.feedback = feedback
        self.subject_tag = subject_tag.strip()
        self.networks = network_list(
            feedback.trusted_networks, "feedback.trusted_networks"
        )

    def label_for(self, recipients: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
        """The label a message's report recipients ask for, and those recipients."""
        addresses = self.feedback.addresses
        reports = tuple(r for r in recipients if r.lower() in addresses)
        return (addresses[reports[0].lower()] if reports else ""), reports

    def handle(
        self,
        label: str,
        raw: bytes,
        *,
        mail_from: str,
        auth_login: str,
        client_addr: str,
    ) -> ReportResult:
        """Check one report and record each acceptable original."""
        reporter = (auth_login or mail_from).lower()
        result = ReportResult(label, reporter)
        if not auth_login and not self._trusted(client_addr):
            return _refuse(result, "unauthenticated")
        originals = extract_originals(raw, self.subject_tag)
        if not originals:
            return _refuse(result, "no-original")
        addresses = {mail_from.lower()} | ({auth_login.lower()} - {""})
        conn = open_labels(self.state_dir)
        try:
            if self._recent(conn, reporter) + len(originals) > (
                self.feedback.rate_limit_per_hour
            ):
                return _refuse(result, "rate-limited")
            return self._record(conn, result, originals, addresses)
        finally:
            conn.close()

    def _trusted(self, client_addr: str) -> bool:
        try:
            address = ipaddress.ip_address(client_addr.strip("[]"))
        except ValueError:
            return False
        return any(address in network for network in self.networks)

    def _recent(self, conn: sqlite3.Connection, reporter: str) -> int:
        row = conn.execute(
            "SELECT count(*) FROM labels WHERE source = ? AND reporter = ?"
            " AND time >= ?",
            (SOURCE, reporter, time.time() - 3600),
        ).fetchone()
        return int(row[0])

    def _record(
        self,
        conn: sqlite3.Connection,
        result: ReportResult,
        originals: list[Original],
        addresses: set[str],
    ) -> ReportResult:
        ids: list[int] = []
        matched: list[str] = []
        subjects: list[str] = []
        refusal = ""
        since = time.time() - self.feedback.match_days * 86400
        for original in originals:
            parsed = parse_message(original.raw)
            candidates = _find_verdicts(
                conn, parsed.message_id, content_fingerprint(parsed), since
            )
            how, verdict_id = _match(candidates, addresses)
            if how == "not-recipient" or (
                how == "none" and not self.feedback.accept_unmatched
            ):
                refusal = refusal or ("not-recipient" if how != "none" else "unmatched")
                continue
            info = LabelInfo(result.reporter, verdict_id, how, original.confidence)
            ids.append(self._store(conn, original.raw, result, parsed.message_id, info))
            matched.append(how)
            subjects.append(parsed.subject)
        if not ids:
            return _refuse(result, refusal or "no-original")
        return ReportResult(
            result.label,
            result.reporter,
            label_ids=tuple(ids),
            matched_by=tuple(matched),
            subjects=tuple(subjects),
        )

    def _store(
        self,
        conn: sqlite3.Connection,
        raw: bytes,
        result: ReportResult,
        message_id: str,
        info: LabelInfo,
    ) -> int:
        """Record a label once per reporter and message; returns its row id."""
        digest = hashlib.sha256(raw).hexdigest()
        row = conn.execute(
            "SELECT id FROM labels WHERE source = ? AND reporter = ? AND sha256 = ?"
            " AND label = ?",
            (SOURCE, result.reporter, digest, result.label),
        ).fetchone()
        if row is not None:
            return int(row[0])
        return record_label(self.state_dir, raw, result.label, SOURCE, message_id, info)


def _refuse(result: ReportResult, reason: str) -> ReportResult:
    return ReportResult(result.label, result.reporter, reason=reason)


def _find_verdicts(
    conn: sqlite3.Connection, message_id: str, fingerprint: str, since: float
) -> tuple[str, list[tuple[int, list[str]]]]:
    """Verdict rows of the original: by Message-ID, else by fingerprint."""
    for how, column, value in (
        ("message-id", "message_id", message_id),
        ("fingerprint", "fingerprint", fingerprint),
    ):
        if not value:
            continue
        try:
            rows = conn.execute(
                # Only fixed column names enter the SQL text.
                f"SELECT id, recipients FROM verdicts WHERE {column} = ?"
                " AND time >= ? ORDER BY time DESC LIMIT 1000",
                (value, since),
            ).fetchall()
        except sqlite3.OperationalError:  # no verdict log yet
            return "none", []
        if rows:
            return how, [(int(i), _recipients(r)) for i, r in rows]
    return "none", []


def _recipients(value: str | None) -> list[str]:
    try:
        decoded = json.loads(value or "[]")
    except json.JSONDecodeError:
        return []
    return [str(r).lower() for r in decoded] if isinstance(decoded, list) else []


def _match(
    candidates: tuple[str, list[tuple[int, list[str]]]], addresses: set[str]
) -> tuple[str, int | None]:
    """(how, verdict id): how is message-id, fingerprint, none or not-recipient."""
    how, rows = candidates
    if not rows:
        return "none", None
    for verdict_id, recipients in rows:
        if addresses & set(recipients):
            return how, verdict_id
    return "not-recipient", None


# -- Recovering the original --------------------------------------------------


def extract_originals(raw: bytes, subject_tag: str = "") -> list[Original]:
    """The reported messages in a report, attachments first; never raises."""
    try:
        report = email.message_from_bytes(raw, policy=compat32)
    except Exception:  # the stdlib parser should not raise, but a report is hostile
        return []
    messages = (data for data in _attached(report, 0) if _looks_like_message(data))
    found = [
        Original(_untag(data, subject_tag), "attachment")
        for data in itertools.islice(messages, MAX_ORIGINALS)
    ]
    if found:
        return found
    inline = _inline_forward(report)
    return [Original(_untag(inline, subject_tag), "inline")] if inline else []


def _attached(part: Message, depth: int) -> Iterator[bytes]:
    if depth > MAX_DEPTH:
        return
    ctype = part.get_content_type()
    if depth > 0 and ctype == "message/rfc822":
        yield from _rfc822_bytes(part)
        return
    if part.is_multipart():
        for sub in part.get_payload():
            if isinstance(sub, Message):
                yield from _attached(sub, depth + 1)
        return
    name = (part.get_filename() or "").lower()
    if depth > 0 and name.endswith(".eml"):
        data = part.get_payload(decode=True)
        if isinstance(data, bytes):
            yield data


def _rfc822_bytes(part: Message) -> Iterator[bytes]:
    payload = part.get_payload()
    inner = payload[0] if isinstance(payload, list) and payload else None
    if not isinstance(inner, Message):
        return
    data = inner.as_bytes()
    encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    # RFC 2046 forbids encoding message/rfc822, but some clients do it.
    if encoding == "base64":
        try:
            data = base64.b64decode(b"".join(data.split()), validate=False)
        except (binascii.Error, ValueError):
            return
    elif encoding == "quoted-printable":
        data = quopri.decodestring(data)
    yield data


def _looks_like_message(data: bytes) -> bool:
    parsed = parse_message(data)
    named = any(parsed.header(h) for h in ("from", "subject", "message-id"))
    return named and bool(parsed.text.strip() or parsed.html or parsed.attachments)


_UNTAG_HEAD_LIMIT = 256 * 1024


def _untag(raw: bytes, tag: str) -> bytes:
    """Drop our subject tag, so a label does not learn from our own verdict."""
    if not tag:
        return raw
    head_end = raw.find(b"\n\n")
    if head_end < 0:
        head_end = min(len(raw), _UNTAG_HEAD_LIMIT)
    pattern = re.compile(
        rb"(?im)^(subject:[ \t]*)" + re.escape(tag.encode("utf-8")) + rb"[ \t]*"
    )
    return pattern.sub(rb"\1", raw[:head_end], count=1) + raw[head_end:]


_MARKER = re.compile(
    r"^[ \t>]*(?:-{2,}[ \t]*(?:forwarded message|original message|"
    r"weitergeleitete nachricht|ursprüngliche nachricht|message transféré|"
    r"message d'origine|mensaje reenviado|mensaje original|messaggio inoltrato|"
    r"messaggio originale|doorgestuurd bericht|oorspronkelijk bericht)[ \t]*-{2,}|"
    r"begin forwarded message:|_{10,})[ \t]*$",
    re.I | re.M,
)
_QUOTED_FIELDS = {
    "From": ("from", "von", "de", "van", "da"),
    "Date": ("date", "sent", "datum", "gesendet", "envoyé", "enviado", "inviato"),
    "To": ("to", "an", "à", "para", "a", "aan"),
    "Cc": ("cc",),
    "Subject": ("subject", "betreff", "objet", "asunto", "oggetto", "onderwerp"),
}
_QUOTED_NAME = {
    alias: name for name, aliases in _QUOTED_FIELDS.items() for alias in aliases
}
_QUOTED_LINE = re.compile(r"^[ \t>]*\**([^\W\d_][\w ]{0,15}?)\**[ \t]*:[ \t]*(.*)$")


def _inline_forward(report: Message) -> bytes:
    """Rebuild a plain-text original from a forward quoted in the body."""
    text = _report_text(report)
    marker = _MARKER.search(text)
    if marker is None:
        return b""
    lines = text[marker.end() :].lstrip("\r\n").splitlines()
    fields: dict[str, str] = {}
    index = 0
    while index < len(lines):
        match = _QUOTED_LINE.match(lines[index])
        name = _QUOTED_NAME.get(match.group(1).strip().lower(), "") if match else ""
        if not name or not match:
            break
        fields.setdefault(name, match.group(2).strip())
        index += 1
    if "From" not in fields or "Subject" not in fields:
        return b""
    body = "\n".join(re.sub(r"^[ \t]*>[ \t]?", "", line) for line in lines[index:])
    head = "".join(f"{name}: {_one_line(value)}\r\n" for name, value in fields.items())
    head += "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
    head += "Content-Transfer-Encoding: 8bit\r\n\r\n"
    return (head + body.strip() + "\r\n").encode("utf-8", "surrogateescape")


def _one_line(value: str) -> str:
    return " ".join(value.split())


def _report_text(report: Message) -> str:
    """The report's first text/plain part, else its first HTML part as text."""
    html = ""
    for part in report.walk():
        ctype = part.get_content_type()
        if ctype not in ("text/plain", "text/html"):
            continue
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes):
            continue
        charset = part.get_content_charset() or "utf-8"
        try:
            text = data.decode(charset, "replace")
        except LookupError:
            text = data.decode("utf-8", "replace")
        if ctype == "text/plain":
            return text
        html = html or text
    if not html:
        return ""
    return LexborHTMLParser(html).text(separator="\n")


# -- The receipt ---------------------------------------------------------------


def receipt(result: ReportResult, from_address: str, to_address: str) -> bytes:
    """A short plain-text receipt for an accepted report; no link, no original."""
    count = len(result.label_ids)
    what = "phishing" if result.label == "phish" else "not phishing"
    subjects = "\n".join(f"  - {_one_line(s)[:120]}" for s in result.subjects)
    body = (
        f"Thank you. {count} reported message(s) were recorded as {what}:\n"
        f"{subjects}\n\n"
        "They will be used the next time the filter is retrained.\n"
    )
    domain = from_address.rpartition("@")[2]
    head = (
        f"From: {from_address}\r\nTo: {to_address}\r\n"
        f"Subject: Report received ({what})\r\n"
        f"Date: {email.utils.formatdate(localtime=False)}\r\n"
        f"Message-ID: {email.utils.make_msgid(domain=domain)}\r\n"
        "Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
    )
    return (head + body.replace("\n", "\r\n")).encode("utf-8", "replace")
