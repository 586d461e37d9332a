"""The one feature extractor, shared by serving and training.

``FeatureExtractor.extract`` turns a :class:`ParsedMessage` into a fixed-size
float vector whose layout is named by ``FEATURE_NAMES`` and versioned by
``SCHEMA_VERSION``; a model records the version it was trained on and is
refused by a daemon with another. Alongside the vector it keeps ``facts``:
short readable details (which brand, which domains) that reasons quote.

Text n-grams are hashed with CRC-32, which is stable across processes and
machines (Python's ``hash()`` is salted per process).
"""

from __future__ import annotations

import email.utils
import math
import re
import zlib
from dataclasses import dataclass, field

import numpy as np

from . import brands
from .auth import UNKNOWN, AuthResult, DkimVerifier, trusted_auth_results
from .htmlscan import HtmlInfo, scan_html
from .message import ParsedMessage, address_of, domain_of
from .normalize import strip_list_footers
from .urls import (
    Link,
    UrlInfo,
    brand_in_host,
    find_urls,
    is_redirector,
    is_shortener,
    lookalike_of,
    org_domain,
    url_info,
)

__all__ = ["FEATURE_NAMES", "SCHEMA_VERSION", "FeatureExtractor", "Features"]

SCHEMA_VERSION = 2

WORD_BUCKETS = 256
BIGRAM_BUCKETS = 128
CHAR_BUCKETS = 128
MAX_TEXT_CHARS = 6000
MAX_WORDS = 800

STRUCTURED_NAMES: tuple[str, ...] = (
    # message shape
    "size_log", "n_parts", "max_depth", "n_defects", "limit_hit",
    "hdr_count", "hdr_dup_key", "hdr_raw_8bit", "mime_version_missing",
    # sender
    "from_missing", "from_invalid", "from_display_has_addr",
    "from_display_addr_mismatch", "from_display_brand", "from_domain_lookalike",
    "from_freemail", "from_local_len", "from_local_digits", "from_subdomains",
    "from_risky_tld", "reply_to_present", "reply_to_mismatch", "reply_to_freemail",
    "return_path_mismatch", "msgid_missing", "msgid_mismatch", "msgid_odd",
    "date_missing", "date_bad", "mailer_present",
    "to_missing", "to_undisclosed", "to_count", "cc_count",
    # subject
    "subj_len", "subj_upper_ratio", "subj_encoded", "subj_non_ascii",
    "subj_reply", "subj_forward", "subj_exclaim", "subj_brand", "subj_lexicon",
    "subj_ticket",
    # authentication
    "dkim_present", "dkim_aligned", "dkim_result", "ar_spf", "ar_dkim", "ar_dmarc",
    # urls
    "url_count", "url_domains", "url_ip", "url_punycode", "url_mixed_script",
    "url_lookalike_from", "url_lookalike_brand", "url_brand_in_host",
    "url_text_mismatch", "url_shortener", "url_redirector", "url_at",
    "url_max_subdomains", "url_nonstd_port", "url_data", "url_javascript",
    "url_from_domain_frac", "url_offdomain", "url_max_len", "url_http_frac",
    "url_risky_tld", "url_login_words", "url_action_text", "url_unsubscribe",
    "url_brand_offdomain",
    # html
    "html_present", "html_only", "html_forms", "html_password",
    "html_form_offdomain", "html_hidden_chars", "html_zero_width", "html_bidi",
    "html_img", "html_ext_img", "html_img_heavy", "html_script", "html_events",
    "html_meta_refresh", "html_data_html", "html_iframe", "html_text_len",
    "html_link_density", "html_tables",
    # attachments
    "att_count", "att_html", "att_svg", "att_double_ext", "att_exe", "att_macro",
    "att_archive", "att_pdf", "att_pdf_links", "att_message", "att_type_mismatch",
    "att_disk_image", "att_calendar",
    # text
    "text_len", "text_words", "text_upper_ratio", "text_digit_ratio",
    "lex_urgency", "lex_credential", "lex_payment", "lex_prize", "lex_delivery",
    "lex_threat", "lex_greeting", "text_unsubscribe",
    "text_money", "text_zero_width", "text_bidi", "text_non_latin",
    "text_quoted_lines", "text_signature",
)  # fmt: skip

FEATURE_NAMES: tuple[str, ...] = (
    STRUCTURED_NAMES
    + tuple(f"word_{i}" for i in range(WORD_BUCKETS))
    + tuple(f"bigram_{i}" for i in range(BIGRAM_BUCKETS))
    + tuple(f"char_{i}" for i in range(CHAR_BUCKETS))
)
_INDEX = {name: i for i, name in enumerate(FEATURE_NAMES)}
_N_STRUCTURED = len(STRUCTURED_NAMES)

_ZERO_WIDTH = re.compile("[\u200b\u200c\u200d\u2060\ufeff\u00ad]")
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069\u200e\u200f]")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_URL = re.compile(r"(?:https?|ftp)://\S+|www\.\S+", re.I)
_MONEY = re.compile(r"[$€£]\s?\d|\d\s?(?:usd|eur|gbp|r\$|brl)\b", re.I)
_TICKET = re.compile(r"#\s?\d{4,}|\b[A-Z0-9]{8,}\b")
_LOGIN_PATH = re.compile(
    r"login|logon|signin|sign-in|verify|verif|secure|account|update|webscr|"
    r"auth|password|wallet|confirm|unlock|billing|support",
    re.I,
)
_ACTION_TEXT = re.compile(
    r"click here|verify|confirm|log ?in|sign ?in|update|unlock|restore|"
    r"clique aqui|klicken sie|cliquez|haga clic|klik hier|accedi|validate",
    re.I,
)
_DOMAIN_IN_TEXT = re.compile(r"(?:https?://)?((?:[\w-]+\.)+[a-z]{2,24})\b", re.I)
_DOUBLE_EXT = re.compile(
    r"\.(pdf|docx?|xlsx?|jpe?g|png|txt|html?)\.(exe|scr|js|vbs|bat|cmd|com|"
    r"html?|svg|zip|rar|iso|lnk|hta)$",
    re.I,
)
_EXE_EXT = re.compile(
    r"\.(exe|scr|js|jse|vbs|vbe|bat|cmd|com|pif|msi|jar|ps1|hta|lnk|wsf|cpl|dll)$",
    re.I,
)
_MACRO_EXT = re.compile(r"\.(docm|xlsm|pptm|xlsb|dotm|xlam|doc|xls|ppt)$", re.I)
_ARCHIVE_EXT = re.compile(r"\.(zip|rar|7z|gz|tgz|tar|ace|arj|cab|z)$", re.I)
_DISK_EXT = re.compile(r"\.(iso|img|vhd|vhdx)$", re.I)


@dataclass
class Features:
    """A message's feature vector and the readable facts behind it."""

    values: np.ndarray
    facts: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> float:
        return float(self.values[_INDEX[name]])


class FeatureExtractor:
    """Compute the feature vector of one parsed message."""

    def __init__(
        self,
        dkim: DkimVerifier | None = None,
        trusted_authserv_ids: frozenset[str] = frozenset(),
        max_urls: int = 500,
    ) -> None:
        self.dkim = dkim
        self.trusted_authserv_ids = trusted_authserv_ids
        self.max_urls = max_urls
        # Off when the model never splits on the hashed n-grams (the bundled
        # one does not): they are then all cost and no signal.
        self.text_hashing = True

    def extract(self, parsed: ParsedMessage, raw: bytes | None = None) -> Features:
        """Return the features of *parsed*; *raw* enables DKIM verification."""
        vec = np.zeros(len(FEATURE_NAMES), dtype=np.float32)
        facts: dict[str, str] = {}
        values: dict[str, float] = {}
        html = scan_html(parsed.html, self.max_urls)
        sender = _Sender.of(parsed)
        _shape(parsed, values)
        _sender_features(parsed, sender, values, facts)
        _subject_features(parsed.subject, values, facts)
        self._auth_features(parsed, sender, raw, values)
        text = _visible_text(parsed, html)
        links = _links(parsed, html, self.max_urls)
        _url_features(links, sender, values, facts)
        _html_features(parsed, html, sender, values, facts)
        _attachment_features(parsed, values, facts)
        if html.truncated:
            values["limit_hit"] = 1.0
        words = _words(text)
        _text_features(text, words, values)
        _brand_links(parsed.subject, words, links, sender, values, facts)
        if self.text_hashing:
            _hash_text(brands.words_of(parsed.subject), words, vec)
        values["text_words"] = _log(len(words))
        for name, value in values.items():
            vec[_INDEX[name]] = value
        return Features(vec, facts)

    def _auth_features(
        self,
        parsed: ParsedMessage,
        sender: _Sender,
        raw: bytes | None,
        values: dict[str, float],
    ) -> None:
        signatures = parsed.header_all("dkim-signature")
        values["dkim_present"] = float(bool(signatures))
        signing = {
            m.lower() for s in signatures for m in re.findall(r"\bd=([\w.-]+)", s)
        }
        values["dkim_aligned"] = float(
            bool(sender.org) and any(org_domain(d) == sender.org for d in signing)
        )
        result = UNKNOWN
        if self.dkim is not None and raw is not None and signatures:
            result = self.dkim.verify(raw)
        values["dkim_result"] = result
        auth = AuthResult()
        if self.trusted_authserv_ids:
            auth = trusted_auth_results(parsed.auth_results, self.trusted_authserv_ids)
        values["ar_spf"], values["ar_dkim"] = auth.spf, auth.dkim
        values["ar_dmarc"] = auth.dmarc


@dataclass(frozen=True)
class _Sender:
    name: str
    addr: str
    domain: str
    org: str

    @classmethod
    def of(cls, parsed: ParsedMessage) -> _Sender:
        name, addr = address_of(parsed.header("from"))
        domain = domain_of(addr)
        return cls(name, addr, domain, org_domain(domain) if domain else "")


def _log(x: float) -> float:
    return math.log1p(max(0.0, x))


def _shape(parsed: ParsedMessage, values: dict[str, float]) -> None:
    values["size_log"] = _log(parsed.size)
    values["n_parts"] = parsed.n_parts
    values["max_depth"] = parsed.max_depth
    values["n_defects"] = len(parsed.defects)
    values["limit_hit"] = float(bool(parsed.limits_hit))
    names = [k.lower() for k, _ in parsed.headers]
    values["hdr_count"] = len(names)
    unique_keys = ("from", "subject", "date", "to", "message-id")
    values["hdr_dup_key"] = float(any(names.count(k) > 1 for k in unique_keys))
    values["hdr_raw_8bit"] = float(parsed.raw_header_non_ascii)
    multipart = parsed.n_parts > 1 or bool(parsed.html)
    values["mime_version_missing"] = float(multipart and "mime-version" not in names)


def _sender_features(
    parsed: ParsedMessage,
    sender: _Sender,
    values: dict[str, float],
    facts: dict[str, str],
) -> None:
    raw_from = parsed.header("from")
    values["from_missing"] = float(not raw_from)
    values["from_invalid"] = float(
        bool(raw_from)
        and (
            not sender.domain
            or (raw_from.count("@") > 1 and not _EMAIL.search(sender.name))
        )
    )
    _display_name(sender, values, facts)
    lookalike = lookalike_of(sender.org, brands.BRAND_LOOKALIKE_TARGETS)
    values["from_domain_lookalike"] = float(bool(lookalike))
    if lookalike:
        facts["from_domain_lookalike"] = f"{sender.domain} imitates {lookalike}"
    values["from_freemail"] = float(sender.org in brands.FREEMAIL_DOMAINS)
    local = sender.addr.split("@", 1)[0]
    values["from_local_len"] = len(local)
    values["from_local_digits"] = sum(c.isdigit() for c in local) / max(1, len(local))
    values["from_subdomains"] = max(0, sender.domain.count(".") - sender.org.count("."))
    values["from_risky_tld"] = float(sender.org.rsplit(".", 1)[-1] in brands.RISKY_TLDS)
    _reply_paths(parsed, sender, values, facts)
    _message_id(parsed, sender, values)
    _date_and_recipients(parsed, values)


def _display_name(
    sender: _Sender, values: dict[str, float], facts: dict[str, str]
) -> None:
    shown = _EMAIL.search(sender.name)
    values["from_display_has_addr"] = float(bool(shown))
    shown_org = org_domain(domain_of(shown.group(0).lower())) if shown else ""
    mismatch = bool(shown_org) and shown_org != sender.org
    values["from_display_addr_mismatch"] = float(mismatch)
    if mismatch:
        facts["from_display_addr_mismatch"] = (
            f"name shows {shown_org}, sent from {sender.domain}"
        )
    lowered = sender.name.lower().replace(" ", "")
    brand = next((b for b in brands.BRANDS if len(b) >= 4 and b in lowered), "")
    owned = brand and sender.org in brands.BRANDS[brand]
    values["from_display_brand"] = float(bool(brand) and not owned)
    if brand and not owned:
        facts["from_display_brand"] = f"name says {brand}, sent from {sender.domain}"


def _reply_paths(
    parsed: ParsedMessage,
    sender: _Sender,
    values: dict[str, float],
    facts: dict[str, str],
) -> None:
    reply_org = org_domain(domain_of(address_of(parsed.header("reply-to"))[1]))
    values["reply_to_present"] = float(bool(parsed.header("reply-to")))
    mismatch = bool(reply_org) and reply_org != sender.org
    values["reply_to_mismatch"] = float(mismatch)
    if mismatch:
        facts["reply_to_mismatch"] = f"replies go to {reply_org}, not {sender.org}"
    values["reply_to_freemail"] = float(reply_org in brands.FREEMAIL_DOMAINS)
    path = parsed.envelope_from or address_of(parsed.header("return-path"))[1]
    path_org = org_domain(domain_of(path))
    values["return_path_mismatch"] = float(bool(path_org) and path_org != sender.org)


def _message_id(
    parsed: ParsedMessage, sender: _Sender, values: dict[str, float]
) -> None:
    msgid = parsed.message_id
    values["msgid_missing"] = float(not msgid)
    match = re.fullmatch(r"<[^<>@\s]+@([^<>@\s]+)>", msgid)
    values["msgid_odd"] = float(bool(msgid) and match is None)
    msgid_org = org_domain(match.group(1).lower()) if match else ""
    values["msgid_mismatch"] = float(bool(msgid_org) and msgid_org != sender.org)


def _date_and_recipients(parsed: ParsedMessage, values: dict[str, float]) -> None:
    date = parsed.header("date")
    values["date_missing"] = float(not date)
    bad = False
    if date:
        try:
            bad = email.utils.parsedate_to_datetime(date) is None
        except (TypeError, ValueError, IndexError, OverflowError):
            bad = True
    values["date_bad"] = float(bad)
    values["mailer_present"] = float(
        bool(parsed.header("x-mailer") or parsed.header("user-agent"))
    )
    to = parsed.header("to")
    values["to_missing"] = float(not to)
    values["to_undisclosed"] = float(
        "undisclosed" in to.lower() or (not to and not parsed.header("cc"))
    )
    values["to_count"] = to.count("@")
    values["cc_count"] = parsed.header("cc").count("@")


def _subject_features(
    subject: str, values: dict[str, float], facts: dict[str, str]
) -> None:
    letters = [c for c in subject if c.isalpha()]
    values["subj_len"] = len(subject)
    values["subj_upper_ratio"] = sum(c.isupper() for c in letters) / max(
        1, len(letters)
    )
    values["subj_encoded"] = float("=?" in subject)
    values["subj_non_ascii"] = float(not subject.isascii())
    lowered = subject.lower()
    values["subj_reply"] = float(
        lowered.startswith(("re:", "aw:", "sv:", "rif:", "res:"))
    )
    values["subj_forward"] = float(
        lowered.startswith(("fw:", "fwd:", "wg:", "tr:", "enc:"))
    )
    values["subj_exclaim"] = subject.count("!")
    squashed = lowered.replace(" ", "")
    brand = next((b for b in brands.BRAND_NAMES if b in squashed), "")
    values["subj_brand"] = float(bool(brand))
    if brand:
        facts["subj_brand"] = brand
    values["subj_lexicon"] = sum(
        brands.lexicon_counts(brands.words_of(subject)).values()
    )
    values["subj_ticket"] = float(bool(_TICKET.search(subject)))


def _visible_text(parsed: ParsedMessage, html: HtmlInfo) -> str:
    text = parsed.text if parsed.text.strip() else html.text
    return strip_list_footers(text[: MAX_TEXT_CHARS * 3])[:MAX_TEXT_CHARS]


def _links(parsed: ParsedMessage, html: HtmlInfo, limit: int) -> list[Link]:
    footer = _footer_urls(parsed.text, limit) | _footer_urls(html.text, limit)
    links = [link for link in html.links[:limit] if link.url not in footer]
    seen = {link.url for link in links}
    text = (
        strip_list_footers(parsed.text[: MAX_TEXT_CHARS * 3]) if footer else parsed.text
    )
    for url in find_urls(text, limit - len(links)):
        if url not in seen:
            links.append(Link(url))
            seen.add(url)
    return links


def _footer_urls(text: str, limit: int) -> set[str]:
    """URLs that only a mailing-list footer wrote (list pages, opt-out links)."""
    head = text[: MAX_TEXT_CHARS * 3]
    kept = strip_list_footers(head)
    if len(kept) == len(head):
        return set()
    return set(find_urls(head, limit)) - set(find_urls(kept, limit))


def _url_features(
    links: list[Link],
    sender: _Sender,
    values: dict[str, float],
    facts: dict[str, str],
) -> None:
    infos: list[tuple[Link, UrlInfo]] = []
    schemes = {"data": 0, "javascript": 0}
    for link in links:
        scheme = link.url.split(":", 1)[0].strip().lower()
        if scheme in schemes:
            schemes[scheme] += 1
            continue
        info = url_info(link.url)
        if info is not None and info.scheme in ("http", "https", "ftp"):
            infos.append((link, info))
    values["url_data"], values["url_javascript"] = (
        schemes["data"],
        schemes["javascript"],
    )
    values["url_count"] = len(infos)
    if not infos:
        return
    domains = {info.domain for _, info in infos}
    values["url_domains"] = len(domains)
    values["url_ip"] = sum(info.is_ip for _, info in infos)
    values["url_punycode"] = sum(info.is_punycode for _, info in infos)
    values["url_mixed_script"] = sum(info.mixed_script for _, info in infos)
    values["url_at"] = sum(info.has_at for _, info in infos)
    values["url_max_subdomains"] = max(info.n_subdomains for _, info in infos)
    values["url_nonstd_port"] = sum(
        info.port not in (None, 80, 443) for _, info in infos
    )
    values["url_max_len"] = max(len(link.url) for link, _ in infos)
    values["url_http_frac"] = sum(info.scheme == "http" for _, info in infos) / len(
        infos
    )
    values["url_risky_tld"] = sum(
        d.rsplit(".", 1)[-1] in brands.RISKY_TLDS for d in domains
    )
    values["url_login_words"] = sum(
        bool(_LOGIN_PATH.search(link.url)) for link, _ in infos
    )
    values["url_action_text"] = sum(
        bool(_ACTION_TEXT.search(link.text)) for link, _ in infos
    )
    values["url_unsubscribe"] = sum(
        brands.mentions_unsubscribe(link.text) or brands.mentions_unsubscribe(link.url)
        for link, _ in infos
    )
    values["url_shortener"] = sum(is_shortener(info) for _, info in infos)
    values["url_redirector"] = sum(
        is_redirector(link.url, info) for link, info in infos
    )
    on_sender = sum(info.domain == sender.org for _, info in infos)
    values["url_from_domain_frac"] = on_sender / len(infos) if sender.org else 0.0
    values["url_offdomain"] = len(domains - {sender.org})
    _url_lookalikes(infos, sender, domains, values, facts)
    _link_text_mismatch(infos, values, facts)


def _url_lookalikes(
    infos: list[tuple[Link, UrlInfo]],
    sender: _Sender,
    domains: set[str],
    values: dict[str, float],
    facts: dict[str, str],
) -> None:
    from_target = frozenset({sender.org}) if sender.org else frozenset()
    like_from = [d for d in domains if lookalike_of(d, from_target)]
    like_brand = [(d, lookalike_of(d, brands.BRAND_LOOKALIKE_TARGETS)) for d in domains]
    like_brand = [(d, t) for d, t in like_brand if t]
    in_host = [(info.host, brand_in_host(info)) for _, info in infos]
    in_host = [(h, b) for h, b in in_host if b]
    values["url_lookalike_from"] = len(like_from)
    values["url_lookalike_brand"] = len(like_brand)
    values["url_brand_in_host"] = len(in_host)
    if like_from:
        facts["url_lookalike_from"] = f"{like_from[0]} imitates {sender.org}"
    if like_brand:
        facts["url_lookalike_brand"] = f"{like_brand[0][0]} imitates {like_brand[0][1]}"
    if in_host:
        facts["url_brand_in_host"] = f"{in_host[0][0]} uses the name {in_host[0][1]}"


def _brand_links(
    subject: str,
    words: list[str],
    links: list[Link],
    sender: _Sender,
    values: dict[str, float],
    facts: dict[str, str],
) -> None:
    """A brand named in subject or body while no link goes to that brand.

    Newsletters that name a brand link to it or are sent by it; phishing
    names the brand and links elsewhere.
    """
    named = set(brands.words_of(subject)).union(words).intersection(brands.BRAND_NAMES)
    if not named or not links:
        return
    domains = {
        info.domain
        for info in map(url_info, (link.url for link in links))
        if info is not None
    }
    if not domains:
        return
    for brand in sorted(named):
        owned = set(brands.BRANDS[brand])
        if owned and sender.org not in owned and not domains & owned:
            values["url_brand_offdomain"] = 1.0
            facts["url_brand_offdomain"] = (
                f"names {brand}, links go to {sorted(domains)[0]}"
            )
            return


def _link_text_mismatch(
    infos: list[tuple[Link, UrlInfo]],
    values: dict[str, float],
    facts: dict[str, str],
) -> None:
    count = 0
    for link, info in infos:
        shown = _DOMAIN_IN_TEXT.search(link.text)
        if not shown or link.source != "html":
            continue
        shown_org = org_domain(shown.group(1).lower())
        if "." in shown_org and shown_org != info.domain:
            count += 1
            facts.setdefault(
                "url_text_mismatch", f"link shows {shown_org} but goes to {info.domain}"
            )
    values["url_text_mismatch"] = count


def _html_features(
    parsed: ParsedMessage,
    html: HtmlInfo,
    sender: _Sender,
    values: dict[str, float],
    facts: dict[str, str],
) -> None:
    values["html_present"] = float(bool(parsed.html))
    values["html_only"] = float(bool(parsed.html) and not parsed.text.strip())
    if not parsed.html:
        return
    values["html_forms"] = html.n_forms
    values["html_password"] = html.n_password
    off = [a for a in html.form_actions if _off_domain(a, sender.org)]
    values["html_form_offdomain"] = len(off)
    if off:
        facts["html_form_offdomain"] = f"form posts to {_host_of(off[0])}"
    raw_html = "".join(parsed.html)
    values["html_zero_width"] = len(_ZERO_WIDTH.findall(raw_html[:200_000]))
    values["html_bidi"] = len(_BIDI.findall(raw_html[:200_000]))
    values["html_hidden_chars"] = _log(html.hidden_chars)
    values["html_img"], values["html_ext_img"] = html.n_img, html.n_ext_img
    values["html_img_heavy"] = float(
        html.n_img > 0 and len(html.text) < 200 * html.n_img
    )
    values["html_script"], values["html_events"] = html.n_script, html.n_event_handlers
    values["html_meta_refresh"] = html.meta_refresh
    values["html_data_html"] = html.n_data_html
    values["html_iframe"] = html.n_iframe
    values["html_text_len"] = _log(len(html.text))
    values["html_link_density"] = len(html.links) / (1 + len(html.text) / 1000)
    values["html_tables"] = html.n_tables


def _off_domain(url: str, sender_org: str) -> bool:
    info = url_info(url) if "://" in url else None
    return info is not None and info.domain != sender_org


def _host_of(url: str) -> str:
    info = url_info(url)
    return info.host if info else url[:60]


def _attachment_features(
    parsed: ParsedMessage, values: dict[str, float], facts: dict[str, str]
) -> None:
    counts = dict.fromkeys(
        ("att_html", "att_svg", "att_double_ext", "att_exe", "att_macro",
         "att_archive", "att_pdf", "att_pdf_links", "att_message",
         "att_type_mismatch", "att_disk_image", "att_calendar"),
        0,
    )  # fmt: skip
    for att in parsed.attachments:
        for key in _attachment_kinds(
            att.name.lower(), att.declared_type, att.sniffed_type, att.payload_head
        ):
            counts[key] += 1
            facts.setdefault(key, att.name[:80] or att.declared_type)
    values["att_count"] = len(parsed.attachments)
    values.update(counts)


def _attachment_kinds(name: str, declared: str, sniffed: str, head: bytes) -> list[str]:
    kinds = []
    if sniffed == "html" or name.endswith((".htm", ".html", ".shtml", ".xhtml")):
        kinds.append("att_html")
    if sniffed == "svg" or name.endswith(".svg"):
        kinds.append("att_svg")
    if _DOUBLE_EXT.search(name):
        kinds.append("att_double_ext")
    if sniffed == "exe" or _EXE_EXT.search(name):
        kinds.append("att_exe")
    if _MACRO_EXT.search(name) or sniffed == "ole":
        kinds.append("att_macro")
    if sniffed in ("zip", "rar", "7z", "gzip") or _ARCHIVE_EXT.search(name):
        kinds.append("att_archive")
    if sniffed == "pdf" or name.endswith(".pdf"):
        kinds.append("att_pdf")
        if b"/URI" in head or b"/Launch" in head:
            kinds.append("att_pdf_links")
    if declared == "message/rfc822":
        kinds.append("att_message")
    if _type_mismatch(name, declared, sniffed):
        kinds.append("att_type_mismatch")
    if _DISK_EXT.search(name):
        kinds.append("att_disk_image")
    if name.endswith(".ics") or declared == "text/calendar":
        kinds.append("att_calendar")
    return kinds


def _type_mismatch(name: str, declared: str, sniffed: str) -> bool:
    if sniffed in ("other", "empty", "message", "image") or not name:
        return False
    expected = {
        "pdf": (".pdf",),
        "exe": (".exe", ".dll", ".scr", ".com", ".sys"),
        "html": (".htm", ".html", ".shtml", ".xhtml"),
    }.get(sniffed)
    return expected is not None and not name.endswith(expected)


def _text_features(text: str, words: list[str], values: dict[str, float]) -> None:
    values["text_len"] = _log(len(text))
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    upper = int(np.count_nonzero((codes >= 65) & (codes <= 90)))
    lower = int(np.count_nonzero((codes >= 97) & (codes <= 122)))
    values["text_upper_ratio"] = upper / max(1, upper + lower)
    digits = int(np.count_nonzero((codes >= 48) & (codes <= 57)))
    values["text_digit_ratio"] = digits / max(1, len(codes))
    values["text_non_latin"] = int(np.count_nonzero(codes > 127)) / max(1, len(codes))
    for name, count in brands.lexicon_counts(words).items():
        values[f"lex_{name}"] = count
    values["text_money"] = len(_MONEY.findall(text))
    values["text_unsubscribe"] = float(brands.mentions_unsubscribe(text))
    values["text_zero_width"] = len(_ZERO_WIDTH.findall(text))
    values["text_bidi"] = len(_BIDI.findall(text))
    lines = text.count("\n") + 1
    values["text_quoted_lines"] = (text.count("\n>") + text.startswith(">")) / lines
    values["text_signature"] = float("\n-- \n" in text or "\n--\n" in text)


_WORD_BASE = _N_STRUCTURED
_BIGRAM_BASE = _WORD_BASE + WORD_BUCKETS
_CHAR_BASE = _BIGRAM_BASE + BIGRAM_BUCKETS
_CHAR_SPAN = 400


def _words(text: str) -> list[str]:
    """Body words with addresses and URLs replaced by placeholder tokens."""
    # Each substitution only where it can match: both scan the whole body.
    cleaned = _EMAIL.sub(" emailtoken ", text) if "@" in text else text
    if "://" in cleaned or "www." in cleaned.lower():
        cleaned = _URL.sub(" urltoken ", cleaned)
    return brands.words_of(cleaned)[:MAX_WORDS]


def _hash_text(subject_words: list[str], words: list[str], vec: np.ndarray) -> None:
    """Hashed word, word-pair and character 3-gram counts, log-scaled."""
    words = subject_words + words
    if not words:
        return
    hashes = np.fromiter((zlib.crc32(w.encode()) for w in words), np.uint64, len(words))
    slots = [
        _WORD_BASE + hashes % WORD_BUCKETS,
        _BIGRAM_BASE + (hashes[:-1] * 0x9E3779B1 + hashes[1:]) % BIGRAM_BUCKETS,
    ]
    chars = " ".join(words)[:_CHAR_SPAN]
    grams = (zlib.crc32(chars[i : i + 3].encode()) for i in range(len(chars) - 2))
    slots.append(_CHAR_BASE + np.fromiter(grams, np.uint64) % CHAR_BUCKETS)
    counts = np.bincount(np.concatenate(slots).astype(np.intp), minlength=len(vec))
    nonzero = counts > 0
    vec[nonzero] = np.log1p(counts[nonzero])
