"""Give plain-text ham the HTML twin that modern mail clients send.

Almost every phish in the corpora has an HTML part and most of the ham does
not, while real office mail from Outlook or Gmail is ``multipart/alternative``
with both. Left alone, a model learns "HTML means phish". Rewriting a share
of the plain-text ham the way a mail client would removes that shortcut
without inventing new content: the same text, rendered in the markup of one
of several clients (Gmail ``div dir`` + ``gmail_quote`` blockquotes, Outlook
``MsoNormal`` paragraphs with a style sheet, Thunderbird ``moz-cite-prefix``,
Apple Mail), quoted lines as blockquotes, the signature as a signature block,
links as anchors whose text is the URL. A share of twins also carries an
inline ``cid:`` image (a logo in the signature) in ``multipart/related``, and
a few are sent as HTML only, as some webmail does.

Every choice is derived from a hash of the message, so the twins are the same
on every run.
"""

from __future__ import annotations

import email
import email.policy
import html
import re
import struct
import zlib
from collections.abc import Callable
from email.message import Message
from email.mime.image import MIMEImage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

__all__ = ["html_twin", "wants_twin"]

_URL = re.compile(r"(?:https?://|www\.)[^\s<>\"']+", re.I)
_ATTRIBUTION = re.compile(r"(wrote|writes|schrieb|a écrit|escribió|said):?\s*$", re.I)
_SIG_SPLIT = re.compile(r"\n-- ?\n")

# Share of twins (per mille of the hash) with an inline image / HTML only.
_CID_IMAGE_PER_MILLE = 300
_HTML_ONLY_PER_MILLE = 100


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
        return _rebuild(msg, text, zlib.crc32(raw[::-1]))
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
    client = _CLIENTS[seed % len(_CLIENTS)]
    with_image = (seed >> 8) % 1000 < _CID_IMAGE_PER_MILLE
    html_only = (seed >> 18) % 1000 < _HTML_ONLY_PER_MILLE
    cid = f"image001.png@{seed:08X}.{(seed * 2654435761) & 0xFFFFFFFF:08X}"
    body = client(text, cid if with_image else "")
    html_part: Message = MIMEText(body, "html", "utf-8")
    if with_image:
        related = MIMEMultipart("related", boundary=f"=_rel_{seed:08x}")
        related.attach(html_part)
        related.attach(_inline_image(cid, seed))
        html_part = related
    if html_only:
        twin: Message = html_part
    else:
        twin = MIMEMultipart("alternative", boundary=f"=_alt_{seed:08x}")
        twin.attach(MIMEText(text, "plain", "utf-8"))
        twin.attach(html_part)
    for key, value in msg.items():
        if key.lower() not in (
            "content-type",
            "content-transfer-encoding",
            "mime-version",
        ):
            twin[key] = value
    if "MIME-Version" not in twin:
        twin["MIME-Version"] = "1.0"
    unixfrom = msg.get_unixfrom()
    if unixfrom:
        twin.set_unixfrom(unixfrom)
    try:
        return twin.as_bytes()
    except Exception:  # odd header values can fail to serialise
        return msg.as_bytes()


def _inline_image(cid: str, seed: int) -> MIMEImage:
    """A small valid PNG (a flat logo), stored inline under *cid*."""
    width, height = 40 + seed % 160, 20 + (seed >> 4) % 60
    row = b"\x00" + bytes((seed >> 12) % 256 for _ in range(width * 3))
    data = zlib.compress(row * height)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
    png += chunk(b"IEND", b"")
    image = MIMEImage(png, "png")
    image.add_header("Content-ID", f"<{cid}>")
    image.add_header("Content-Disposition", "inline", filename="image001.png")
    return image


# -- splitting the text the way a client sees it -----------------------------


def _split(text: str) -> tuple[str, str, str, str]:
    """Own text, attribution line, quoted text, signature."""
    text = text.replace("\r\n", "\n")
    signature = ""
    parts = _SIG_SPLIT.split(text, maxsplit=1)
    if len(parts) == 2 and len(parts[1]) < 1500:
        text, signature = parts
    lines = text.split("\n")
    first_quote = next((i for i, ln in enumerate(lines) if ln.startswith(">")), -1)
    if first_quote < 0:
        return text, "", "", signature
    attribution = ""
    head = lines[:first_quote]
    while head and not head[-1].strip():
        head.pop()
    if head and _ATTRIBUTION.search(head[-1]):
        attribution = head.pop()
    quoted = "\n".join(
        re.sub(r"^>\s?", "", ln) for ln in lines[first_quote:] if ln.startswith(">")
    )
    own = "\n".join(head + [ln for ln in lines[first_quote:] if not ln.startswith(">")])
    return own, attribution, quoted, signature


def _inline(paragraph: str) -> str:
    out = []
    last = 0
    for match in _URL.finditer(paragraph):
        out.append(html.escape(paragraph[last : match.start()]))
        url = match.group(0).rstrip(".,;)")
        href = url if "://" in url else "http://" + url
        out.append(f'<a href="{html.escape(href)}">{html.escape(url)}</a>')
        last = match.start() + len(url)
    out.append(html.escape(paragraph[last:]))
    return "".join(out)


def _paragraphs(text: str) -> list[str]:
    return [p.strip("\n") for p in re.split(r"\n\s*\n", text) if p.strip()][:200]


def _lines_html(paragraph: str, sep: str = "<br>\n") -> str:
    return sep.join(_inline(line) for line in paragraph.split("\n"))


# -- one renderer per client -------------------------------------------------


def _gmail(text: str, cid: str) -> str:
    own, attribution, quoted, signature = _split(text)
    body = "".join(
        f"<div>{_lines_html(p)}</div><div><br></div>" for p in _paragraphs(own)
    )
    out = f'<div dir="ltr">{body}'
    if signature or cid:
        image = f'<img src="cid:{cid}" alt="logo" width="120"><br>' if cid else ""
        out += (
            '<br clear="all"><div><br></div><span class="gmail_signature_prefix">'
            '-- </span><br><div dir="ltr" class="gmail_signature">'
            f'<div dir="ltr">{image}{_lines_html(signature)}</div></div>'
        )
    out += "</div>"
    if quoted:
        out += (
            '<br><div class="gmail_quote"><div dir="ltr" class="gmail_attr">'
            f"{html.escape(attribution)}<br></div>"
            '<blockquote class="gmail_quote" style="margin:0px 0px 0px 0.8ex;'
            'border-left:1px solid rgb(204,204,204);padding-left:1ex">'
            f"{_lines_html(quoted)}</blockquote></div>"
        )
    return out


_MSO_HEAD = (
    '<html xmlns:v="urn:schemas-microsoft-com:vml" '
    'xmlns:o="urn:schemas-microsoft-com:office:office" '
    'xmlns:w="urn:schemas-microsoft-com:office:word" '
    'xmlns:m="http://schemas.microsoft.com/office/2004/12/omml" '
    'xmlns="http://www.w3.org/TR/REC-html40"><head>'
    '<meta http-equiv="Content-Type" content="text/html; charset=utf-8">'
    '<meta name="Generator" content="Microsoft Word 15 (filtered medium)">'
    '<style><!--\n@font-face\n\t{font-family:"Cambria Math";}\n'
    "@font-face\n\t{font-family:Calibri;}\n"
    "p.MsoNormal, li.MsoNormal, div.MsoNormal\n\t{margin:0cm;\n\tfont-size:11.0pt;"
    '\n\tfont-family:"Calibri",sans-serif;}\n'
    "a:link, span.MsoHyperlink\n\t{mso-style-priority:99;\n\tcolor:#0563C1;"
    "\n\ttext-decoration:underline;}\n"
    "span.EmailStyle17\n\t{mso-style-type:personal-compose;}\n"
    ".MsoChpDefault\n\t{mso-style-type:export-only;}\n"
    "@page WordSection1\n\t{size:612.0pt 792.0pt;margin:72.0pt 72.0pt 72.0pt 72.0pt;}"
    "\ndiv.WordSection1\n\t{page:WordSection1;}\n--></style>"
    '<!--[if gte mso 9]><xml>\n<o:shapedefaults v:ext="edit" spidmax="1026" />\n'
    "</xml><![endif]--></head>"
    '<body lang="EN-US" link="#0563C1" vlink="#954F72" style="word-wrap:break-word">'
    '<div class="WordSection1">'
)


_MSO_EMPTY = "<o:p>&nbsp;</o:p>"


def _mso_para(paragraph: str) -> str:
    return (
        "".join(
            f'<p class="MsoNormal">{_inline(line) or _MSO_EMPTY}<o:p></o:p></p>'
            for line in paragraph.split("\n")
        )
        + '<p class="MsoNormal"><o:p>&nbsp;</o:p></p>'
    )


def _outlook(text: str, cid: str) -> str:
    own, attribution, quoted, signature = _split(text)
    out = _MSO_HEAD + "".join(_mso_para(p) for p in _paragraphs(own))
    if signature or cid:
        image = (
            f'<img width="120" height="40" style="width:1.25in;height:.4166in" '
            f'id="Picture_x0020_1" src="cid:{cid}" alt="logo">'
            if cid
            else ""
        )
        out += f'<p class="MsoNormal">{image}<o:p></o:p></p>' + _mso_para(signature)
    if quoted:
        out += (
            '<div style="border:none;border-top:solid #E1E1E1 1.0pt;padding:3.0pt 0cm '
            '0cm 0cm"><p class="MsoNormal"><b>From:</b> '
            f"{html.escape(attribution)}<o:p></o:p></p></div>"
            + "".join(_mso_para(p) for p in _paragraphs(quoted))
        )
    return out + "</div></body></html>"


def _thunderbird(text: str, cid: str) -> str:
    own, attribution, quoted, signature = _split(text)
    out = (
        '<html><head><meta http-equiv="Content-Type" content="text/html; '
        'charset=UTF-8"></head><body>'
        + "".join(f"<p>{_lines_html(p)}</p>" for p in _paragraphs(own))
    )
    if quoted:
        out += (
            f'<div class="moz-cite-prefix">{html.escape(attribution)}<br></div>'
            '<blockquote type="cite">'
            + "".join(f"<p>{_lines_html(p)}</p>" for p in _paragraphs(quoted))
            + "</blockquote>"
        )
    if signature or cid:
        image = f'<img moz-do-not-send="false" src="cid:{cid}" alt="">' if cid else ""
        out += (
            f'<pre class="moz-signature" cols="72">-- \n{html.escape(signature)}</pre>'
            + image
        )
    return out + "</body></html>"


def _apple(text: str, cid: str) -> str:
    own, attribution, quoted, signature = _split(text)
    out = (
        '<html><head><meta http-equiv="content-type" content="text/html; '
        'charset=utf-8"></head><body style="overflow-wrap: break-word; '
        '-webkit-nbsp-mode: space; line-break: after-white-space;">'
        + "".join(
            f"<div>{_lines_html(p)}</div><div><br></div>" for p in _paragraphs(own)
        )
    )
    if signature or cid:
        image = f'<img alt="" src="cid:{cid}">' if cid else ""
        out += f"<div>{_lines_html(signature)}</div>{image}"
    if quoted:
        out += (
            f'<div><br><blockquote type="cite"><div>{html.escape(attribution)}</div>'
            f"<div>{_lines_html(quoted)}</div></blockquote></div>"
        )
    return out + "</body></html>"


def _simple(text: str, cid: str) -> str:
    body = "".join(f"<p>{_lines_html(p)}</p>" for p in _paragraphs(text))
    image = f'<img src="cid:{cid}">' if cid else ""
    return (
        '<html><body style="font-family: Helvetica, Arial; font-size: 14px">'
        f"{body}{image}</body></html>"
    )


_CLIENTS: tuple[Callable[[str, str], str], ...] = (
    _gmail,
    _gmail,
    _outlook,
    _outlook,
    _thunderbird,
    _apple,
    _simple,
)
