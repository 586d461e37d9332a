"""Give plain-text ham the HTML twin that modern mail clients send.

Almost every phish in the corpora has an HTML part and most of the ham does
not, while real office mail from Outlook or Gmail is ``multipart/alternative``
with both. Left alone, a model learns "HTML means phish". Rewriting a share
of the plain-text ham the way a mail client would (same text, an HTML
rendering of it, links as anchors whose text is the URL) removes that
shortcut without inventing new content.
"""

from __future__ import annotations

import email
import email.policy
import html
import re
import zlib
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

__all__ = ["html_twin", "wants_twin"]

_URL = re.compile(r"(?:https?://|www\.)[^\s<>\"']+", re.I)
_STYLES = (
    '<div dir="ltr">{body}</div>',
    '<html><head><meta http-equiv="Content-Type" content="text/html; charset=utf-8">'
    '</head><body><div style="font-family:Calibri,Arial,sans-serif;font-size:11pt">'
    "{body}</div></body></html>",
    '<html><body style="font-family: Helvetica, Arial; font-size: 14px">{body}'
    "</body></html>",
)


def wants_twin(raw: bytes, share: float) -> bool:
    """Pick a stable share of messages (by content hash, not randomness)."""
    if share <= 0.0:
        return False
    return (zlib.crc32(raw) % 1000) < share * 1000


def html_twin(raw: bytes) -> bytes:
    """Return *raw* as multipart/alternative text + HTML; unchanged if not plain."""
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
        if msg.is_multipart() or msg.get_content_type() != "text/plain":
            return raw
        text = _plain_text(msg)
    except Exception:  # augmentation must never stop training
        return raw
    if not text.strip():
        return raw
    try:
        return _rebuild(msg, text, zlib.crc32(raw))
    except Exception:  # augmentation must never stop training
        return raw


def _plain_text(msg: Message) -> str:
    payload = msg.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = msg.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:
        return payload.decode("utf-8", errors="replace")


def _rebuild(msg: Message, text: str, seed: int) -> bytes:
    twin = MIMEMultipart("alternative")
    for key, value in msg.items():
        if key.lower() not in ("content-type", "content-transfer-encoding", "mime-version"):
            twin[key] = value
    twin.attach(MIMEText(text, "plain", "utf-8"))
    twin.attach(MIMEText(_render(text, seed), "html", "utf-8"))
    unixfrom = msg.get_unixfrom()
    if unixfrom:
        twin.set_unixfrom(unixfrom)
    try:
        return twin.as_bytes()
    except Exception:  # odd header values can fail to serialise
        return msg.as_bytes()


def _render(text: str, seed: int) -> str:
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    body = "".join(f"<p>{_inline(p)}</p>" for p in paragraphs[:200])
    return _STYLES[seed % len(_STYLES)].format(body=body)


def _inline(paragraph: str) -> str:
    out = []
    last = 0
    for match in _URL.finditer(paragraph):
        out.append(html.escape(paragraph[last : match.start()]))
        url = match.group(0)
        href = url if "://" in url else "http://" + url
        out.append(f'<a href="{html.escape(href)}">{html.escape(url)}</a>')
        last = match.end()
    out.append(html.escape(paragraph[last:]))
    return "".join(out).replace("\n", "<br>\n")
