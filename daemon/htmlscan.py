"""What the HTML of a message does: links, forms, hidden text, scripts.

Features look at behaviour, not at the presence of HTML: most phishing is
HTML, but so is most office mail, and the training ham is mostly plain text
(see the corpora README). selectolax parses hostile markup without raising.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from selectolax.lexbor import LexborHTMLParser as HTMLParser
from selectolax.lexbor import LexborNode as Node

from .urls import Link

__all__ = ["HtmlInfo", "scan_html"]

_HIDDEN_STYLE = re.compile(
    r"display\s*:\s*none|visibility\s*:\s*hidden|font-size\s*:\s*[01](?:px|pt)?\s*(?:;|$)"
    r"|opacity\s*:\s*0(?:\.0+)?\s*(?:;|$)|(?:max-)?height\s*:\s*0(?:px)?\s*(?:;|$)",
    re.I,
)
_META_REFRESH_URL = re.compile(r"url\s*=\s*['\"]?([^'\";]+)", re.I)


@dataclass
class HtmlInfo:
    """Counts and links gathered from every HTML part of one message."""

    text: str = ""
    links: list[Link] = field(default_factory=list)
    n_forms: int = 0
    n_password: int = 0
    form_actions: list[str] = field(default_factory=list)
    hidden_chars: int = 0
    n_script: int = 0
    n_event_handlers: int = 0
    meta_refresh: int = 0
    n_img: int = 0
    n_ext_img: int = 0
    n_iframe: int = 0
    n_data_html: int = 0
    n_elements: int = 0
    n_tables: int = 0
    truncated: bool = False


# lexbor's parse time grows with the square of the nesting depth: 40,000
# unclosed <div> take seconds, a megabyte of them minutes. Mail never nests
# that deep, so a document with more unclosed tags than this is cut there.
MAX_UNCLOSED_TAGS = 4000
_OPEN_TAG = re.compile(r"<[a-zA-Z]")
_CLOSE_TAG = re.compile(r"</[a-zA-Z]")


def cap_nesting(doc: str) -> tuple[str, bool]:
    """Cut *doc* before its nesting could get deep enough to be slow."""
    if doc.count("<") <= MAX_UNCLOSED_TAGS:
        return doc, False
    opens = [m.start() for m in _OPEN_TAG.finditer(doc)]
    if len(opens) - len(_CLOSE_TAG.findall(doc)) <= MAX_UNCLOSED_TAGS:
        return doc, False
    return doc[: opens[MAX_UNCLOSED_TAGS]], True


def scan_html(documents: list[str], max_links: int) -> HtmlInfo:
    """Scan every HTML document of a message into one :class:`HtmlInfo`."""
    info = HtmlInfo()
    texts = []
    for doc in documents:
        doc, cut = cap_nesting(doc)
        info.truncated = info.truncated or cut
        try:
            tree = HTMLParser(doc)
        except Exception:  # selectolax raises on undecodable input only
            continue
        _scan_tree(tree, info, max_links)
        texts.append(_visible_text(tree))
    info.text = "\n".join(texts)
    return info


def _scan_tree(tree: HTMLParser, info: HtmlInfo, max_links: int) -> None:
    for node in tree.css("a[href], area[href]"):
        if len(info.links) >= max_links:
            break
        href = (node.attributes.get("href") or "").strip()
        if href and not href.startswith(("#", "mailto:", "tel:")):
            info.links.append(Link(href, node.text(strip=True)[:200], "html"))
    _scan_forms(tree, info)
    _scan_media(tree, info)
    info.n_script = len(tree.css("script"))
    info.n_tables = len(tree.css("table"))
    info.n_elements += len(tree.css("*"))
    for node in tree.css("[style]"):
        if _HIDDEN_STYLE.search(node.attributes.get("style") or ""):
            info.hidden_chars += len(node.text(strip=True))
    info.n_event_handlers += len(
        tree.css("[onclick], [onload], [onerror], [onmouseover]")
    )


def _scan_forms(tree: HTMLParser, info: HtmlInfo) -> None:
    forms = tree.css("form")
    info.n_forms += len(forms)
    for form in forms:
        action = (form.attributes.get("action") or "").strip()
        if action:
            info.form_actions.append(action)
    for node in tree.css("input"):
        if (node.attributes.get("type") or "").strip().lower() == "password":
            info.n_password += 1


def _scan_media(tree: HTMLParser, info: HtmlInfo) -> None:
    for img in tree.css("img"):
        info.n_img += 1
        src = (img.attributes.get("src") or "").strip().lower()
        if src.startswith(("http:", "https:", "//")):
            info.n_ext_img += 1
    info.n_iframe += len(tree.css("iframe, frame, object, embed"))
    for meta in tree.css("meta[http-equiv]"):
        if (meta.attributes.get("http-equiv") or "").lower() == "refresh":
            info.meta_refresh += 1
            match = _META_REFRESH_URL.search(meta.attributes.get("content") or "")
            if match:
                info.links.append(Link(match.group(1).strip(), "", "refresh"))
    for node in tree.css("[src], [href], [data]"):
        attrs = node.attributes
        value = attrs.get("src") or attrs.get("href") or attrs.get("data") or ""
        if value.strip().lower().startswith("data:text/html"):
            info.n_data_html += 1


def _visible_text(tree: HTMLParser) -> str:
    for node in tree.css("script, style, head, title, noscript"):
        node.decompose()
    body: Node | None = tree.body or tree.root
    if body is None:
        return ""
    return body.text(separator=" ", strip=True)
