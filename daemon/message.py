"""Turn raw message bytes into a :class:`ParsedMessage`, whatever the input.

The parser never raises on bad input. It scans at most ``Limits.max_bytes``
of the message, decodes every text part it can, walks nested parts up to a
depth and part budget, and records which limits were hit and which MIME
defects were seen: both are features, since phishing kits produce broken
MIME far more often than mail clients do.

It does no I/O and knows nothing of the model.
"""

from __future__ import annotations

import binascii
import email
import email.errors
import email.header
import email.utils
import hashlib
import quopri
import re
from dataclasses import dataclass, field
from email.message import Message
from email.policy import compat32

from .normalize import strip_site_headers

__all__ = [
    "Attachment",
    "Limits",
    "ParsedMessage",
    "content_fingerprint",
    "decode_header_value",
    "parse_message",
]


@dataclass(frozen=True)
class Limits:
    """What one scan may cost; anything beyond is ignored and recorded."""

    max_bytes: int = 4 * 1024 * 1024
    max_parts: int = 200
    max_depth: int = 12
    max_html_bytes: int = 1024 * 1024
    max_text_chars: int = 200_000
    max_urls: int = 500


DEFAULT_LIMITS = Limits()


@dataclass
class Attachment:
    """A non-body part: what it claims to be and what its bytes say."""

    name: str
    declared_type: str
    sniffed_type: str
    size: int
    payload_head: bytes = b""
    is_message: bool = False


@dataclass
class ParsedMessage:
    """The parts of a message the features look at, already decoded."""

    headers: list[tuple[str, str]] = field(default_factory=list)
    text: str = ""
    html: list[str] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    nested: list[ParsedMessage] = field(default_factory=list)
    limits_hit: set[str] = field(default_factory=set)
    defects: set[str] = field(default_factory=set)
    size: int = 0
    n_parts: int = 0
    max_depth: int = 0
    raw_header_non_ascii: bool = False
    envelope_from: str = ""
    auth_results: list[str] = field(default_factory=list)

    def header(self, name: str) -> str:
        """Return the first value of header *name*, or ``""``."""
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return ""

    def header_all(self, name: str) -> list[str]:
        """Return every value of header *name*, in order."""
        lname = name.lower()
        return [value for key, value in self.headers if key.lower() == lname]

    @property
    def subject(self) -> str:
        return self.header("subject")

    @property
    def message_id(self) -> str:
        return self.header("message-id").strip()


def decode_header_value(value: object) -> str:
    """Decode RFC 2047 words and raw 8-bit bytes of a header, never raising."""
    if isinstance(value, email.header.Header):
        value = str(value)
    text = str(value)
    if "=?" not in text:
        return _unfold(text)
    try:
        chunks = email.header.decode_header(text)
    except (ValueError, LookupError, binascii.Error, AssertionError):
        return _unfold(text)
    out = []
    for chunk, charset in chunks:
        if isinstance(chunk, bytes):
            out.append(_decode_bytes(chunk, charset))
        else:
            out.append(chunk)
    return _unfold("".join(out))


def _unfold(text: str) -> str:
    return re.sub(r"\r?\n[ \t]*", " ", text).strip()


def _decode_bytes(data: bytes, charset: str | None) -> str:
    """Decode *data* with its declared charset, falling back safely."""
    for candidate in (charset, "utf-8"):
        if not candidate:
            continue
        try:
            return data.decode(_charset_alias(candidate))
        except (LookupError, UnicodeDecodeError):
            continue
    return data.decode("cp1252", errors="replace")


def _charset_alias(charset: str) -> str:
    name = charset.strip().strip('"').lower()
    if name in ("unknown-8bit", "x-unknown", "default", "us-ascii", "ascii"):
        return "cp1252"
    if name in ("iso-8859-1", "latin-1", "latin1"):
        return "cp1252"
    return name


def parse_message(
    raw: bytes,
    limits: Limits = DEFAULT_LIMITS,
    *,
    envelope_from: str = "",
) -> ParsedMessage:
    """Parse *raw* into a :class:`ParsedMessage`; never raises."""
    parsed = ParsedMessage(envelope_from=envelope_from)
    raw, parsed.auth_results = strip_site_headers(raw)
    parsed.size = len(raw)
    if len(raw) > limits.max_bytes:
        raw = raw[: limits.max_bytes]
        parsed.limits_hit.add("size")
    head_end = raw.find(b"\n\n")
    head = raw if head_end < 0 else raw[:head_end]
    parsed.raw_header_non_ascii = not head.isascii()
    msg = _parse_bytes(raw, limits, parsed)
    if msg is None:
        return parsed
    try:
        _Walker(parsed, limits).walk_root(msg)
    except Exception:  # last line of defence: a verdict on what was read
        parsed.defects.add("parser_error")
    return parsed


_BOUNDARY = re.compile(rb"boundary\s*=", re.I)
FINGERPRINT_MIN_WORDS = 8
FINGERPRINT_CHARS = 64 * 1024
"""Body text that enters the fingerprint; a longer body is known by its start."""


def content_fingerprint(parsed: ParsedMessage) -> str:
    """A digest of the decoded body's words, or ``""`` for a near-empty body.

    Headers, transfer encodings, line breaks and case do not enter it, so a message
    and a copy forwarded as an attachment (re-encoded, with the receiving
    site's headers and our own added) have the same fingerprint.
    """
    body = "\n".join([parsed.text, *parsed.html])[:FINGERPRINT_CHARS].lower()
    words = body.split()
    if len(words) < FINGERPRINT_MIN_WORDS:
        return ""
    joined = " ".join(words).encode("utf-8", "surrogatepass")
    return hashlib.sha256(joined).hexdigest()[:32]


def _parse_bytes(raw: bytes, limits: Limits, parsed: ParsedMessage) -> Message | None:
    """The stdlib parse, cut short before nesting deep enough to recurse away."""
    budget = limits.max_depth * 4 + 2
    # Each match holds the word; counting the word first spares most messages
    # the (case-insensitive, so slow) regex scan.
    if raw.lower().count(b"boundary") < budget:
        starts: list[int] = []
    else:
        starts = [m.start() for m in _BOUNDARY.finditer(raw, 0, len(raw))][:budget]
    if len(starts) > limits.max_depth * 4 + 1:
        raw = raw[: starts[-1]]
        parsed.limits_hit.add("depth")
    try:
        return email.message_from_bytes(raw, policy=compat32)
    except RecursionError:
        parsed.limits_hit.add("depth")
    except Exception:  # the stdlib parser has no closed set of errors
        pass
    parsed.defects.add("unparseable")
    return None


class _Walker:
    """Walk the MIME tree of one message, filling a ParsedMessage."""

    def __init__(self, parsed: ParsedMessage, limits: Limits) -> None:
        self.parsed = parsed
        self.limits = limits
        self.text_parts: list[str] = []
        self.html_bytes = 0

    def walk_root(self, msg: Message) -> None:
        self.parsed.headers = _headers(msg)
        self._walk(msg, depth=0)
        self.parsed.text = "\n".join(self.text_parts)[: self.limits.max_text_chars]
        if sum(len(t) for t in self.text_parts) > self.limits.max_text_chars:
            self.parsed.limits_hit.add("text")

    def _walk(self, part: Message, depth: int) -> None:
        parsed = self.parsed
        if parsed.n_parts >= self.limits.max_parts:
            parsed.limits_hit.add("parts")
            return
        if depth > self.limits.max_depth:
            parsed.limits_hit.add("depth")
            return
        parsed.n_parts += 1
        parsed.max_depth = max(parsed.max_depth, depth)
        for defect in getattr(part, "defects", ()):
            parsed.defects.add(type(defect).__name__)
        ctype = _content_type(part)
        if ctype == "message/rfc822":
            self._walk_nested_message(part, depth)
        elif part.is_multipart():
            self._walk_children(part, depth)
        else:
            self._leaf(part, ctype)

    def _walk_children(self, part: Message, depth: int) -> None:
        payload = part.get_payload()
        if not isinstance(payload, list):
            return
        for child in payload:
            if isinstance(child, Message):
                self._walk(child, depth + 1)

    def _walk_nested_message(self, part: Message, depth: int) -> None:
        payload = part.get_payload()
        inner = payload[0] if isinstance(payload, list) and payload else None
        if not isinstance(inner, Message):
            return
        name = _filename(part) or "message.eml"
        size = len(str(inner)) if depth < 4 else 0
        self.parsed.attachments.append(
            Attachment(name, "message/rfc822", "message", size, is_message=True)
        )
        nested = ParsedMessage(headers=_headers(inner))
        self.parsed.nested.append(nested)
        self._walk(inner, depth + 1)

    def _leaf(self, part: Message, ctype: str) -> None:
        disposition = str(part.get("content-disposition", "")).lower()
        name = _filename(part)
        is_attachment = disposition.startswith("attachment") or bool(name)
        data = _payload_bytes(part, self.parsed)
        if ctype in ("text/plain", "text/html") and not is_attachment:
            self._body_text(part, ctype, data)
            return
        if ctype.startswith("text/") and not is_attachment and not name:
            self._body_text(part, "text/plain", data)
            return
        self.parsed.attachments.append(
            Attachment(
                name=name,
                declared_type=ctype,
                sniffed_type=sniff_type(data),
                size=len(data),
                payload_head=data[:65536],
            )
        )

    def _body_text(self, part: Message, ctype: str, data: bytes) -> None:
        text = _decode_bytes(data, part.get_content_charset())
        if ctype == "text/html":
            if self.html_bytes + len(text) > self.limits.max_html_bytes:
                self.parsed.limits_hit.add("html")
                text = text[: max(0, self.limits.max_html_bytes - self.html_bytes)]
            self.html_bytes += len(text)
            if text:
                self.parsed.html.append(text)
        else:
            self.text_parts.append(text)


def _headers(msg: Message) -> list[tuple[str, str]]:
    out = []
    for key, value in msg.items():
        out.append((str(key).strip(), decode_header_value(value)))
    return out


def _content_type(part: Message) -> str:
    try:
        return part.get_content_type().lower()
    except Exception:  # a broken Content-Type header can raise almost anything
        return "application/octet-stream"


def _filename(part: Message) -> str:
    try:
        name = part.get_filename() or ""
    except Exception:  # RFC 2231 decoding errors are not a closed set either
        return ""
    return decode_header_value(name)


def _payload_bytes(part: Message, parsed: ParsedMessage) -> bytes:
    """Decode the transfer encoding; junk in base64 is skipped, not fatal."""
    raw = part.get_payload(decode=False)
    if not isinstance(raw, str):
        return b""
    cte = str(part.get("content-transfer-encoding", "")).strip().lower()
    data = raw.encode("utf-8", "surrogateescape")
    if cte == "base64":
        return _lenient_b64(data, parsed)
    if cte == "quoted-printable":
        return quopri.decodestring(data)
    return data


_B64_JUNK = re.compile(rb"[^A-Za-z0-9+/]")
_B64_SPACE = b" \t\n\r\x0b\x0c"
"""What ``\\s`` matches in bytes: line breaks and spaces, never junk."""


def _lenient_b64(data: bytes, parsed: ParsedMessage) -> bytes:
    clean = data.split(b"=", 1)[0].translate(None, _B64_SPACE)
    if _B64_JUNK.search(clean):  # rare: only then pay for the substitution
        parsed.defects.add("Base64Junk")
        clean = _B64_JUNK.sub(b"", clean)
    clean = clean[: len(clean) - len(clean) % 4]
    try:
        return binascii.a2b_base64(clean)
    except binascii.Error:
        parsed.defects.add("Base64Undecodable")
        return b""


_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "pdf"),
    (b"PK\x03\x04", "zip"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "ole"),
    (b"MZ", "exe"),
    (b"\x7fELF", "exe"),
    (b"Rar!", "rar"),
    (b"7z\xbc\xaf\x27\x1c", "7z"),
    (b"\x1f\x8b", "gzip"),
    (b"\x89PNG", "image"),
    (b"\xff\xd8\xff", "image"),
    (b"GIF8", "image"),
    (b"{\\rtf", "rtf"),
)


def sniff_type(data: bytes) -> str:
    """Name the file type the bytes show, whatever the part claims."""
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return _refine_zip(data) if kind == "zip" else kind
    head = data[:1024].lstrip().lower()
    if b"<svg" in head:
        return "svg"
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<script")):
        return "html"
    if b"<html" in head or b"<form" in head or b"<script" in head:
        return "html"
    return "other" if data else "empty"


def _refine_zip(data: bytes) -> str:
    head = data[:4096]
    if b"word/" in head or b"xl/" in head or b"ppt/" in head:
        return "ooxml"
    if b"[Content_Types].xml" in head:
        return "ooxml"
    return "zip"


def address_of(value: str) -> tuple[str, str]:
    """Split a decoded address header into (display name, lower-case address)."""
    try:
        name, addr = email.utils.parseaddr(value)
    except Exception:  # parseaddr has raised IndexError on hostile input
        return "", ""
    return name.strip().strip('"'), addr.strip().lower()


def domain_of(addr: str) -> str:
    """Return the domain of an address, lower case, without a trailing dot."""
    if "@" not in addr:
        return ""
    return addr.rsplit("@", 1)[1].strip().strip(">").rstrip(".").lower()
