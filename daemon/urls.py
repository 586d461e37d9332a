"""URLs: find them in text, split them, and judge their hosts.

Registered domains come from the ICANN section of the public suffix list
that ships inside the ``publicsuffixlist`` package; it is never fetched at
run time, so scanning does no network I/O.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote, urlsplit

from publicsuffixlist import PublicSuffixList

from .brands import BRAND_DOMAINS, BRAND_NAMES, REDIRECTOR_HOSTS, SHORTENER_DOMAINS

__all__ = ["Link", "UrlInfo", "find_urls", "org_domain", "skeleton", "url_info"]

# Private-section suffixes (blogspot.com, github.io ...) are not suffixes
# here, and an unknown TLD has no registered domain: the host stands alone.
_SUFFIXES = PublicSuffixList(only_icann=True, accept_unknown=False)
# Dots a browser also takes as label separators (IDNA), which phishers use
# to hide the real domain: "paypal.com\u3002evil.com" is evil.com.
_DOTS = str.maketrans(dict.fromkeys("\u3002\uff0e\uff61", "."))

_URL_IN_TEXT = re.compile(
    r"""(?:\b(?:https?|ftp)://|\bwww\.)[^\s<>"'\]\)\}|\\^`]{2,2000}""", re.I
)
_TRAILING = ".,;:!?*'\""


@dataclass(frozen=True)
class Link:
    """A URL as found in a message, with the text a reader saw for it."""

    url: str
    text: str = ""
    source: str = "text"


@dataclass(frozen=True)
class UrlInfo:
    """What a URL's parts say about it."""

    scheme: str
    host: str
    domain: str
    port: int | None
    is_ip: bool
    is_punycode: bool
    mixed_script: bool
    has_at: bool
    n_subdomains: int
    path_len: int
    unicode_host: str


def find_urls(text: str, limit: int) -> list[str]:
    """Return up to *limit* URLs written out in plain text."""
    found = []
    for match in _URL_IN_TEXT.finditer(text):
        url = match.group(0).rstrip(_TRAILING)
        if url.lower().startswith("www."):
            url = "http://" + url
        found.append(url)
        if len(found) >= limit:
            break
    return found


@lru_cache(maxsize=16384)
def org_domain(host: str) -> str:
    """Return the registered domain: ``a.b.example.co.uk`` -> ``example.co.uk``."""
    host = host.strip().strip(".").lower()
    if not host:
        return ""
    if _is_ip(host):
        return host
    # Labels count from the right, up to an empty one: "a..example.com"
    # is example.com, "a..com" has no registered domain.
    tail = host.translate(_DOTS).strip(".").rsplit("..", 1)[-1]
    return _SUFFIXES.privatesuffix(tail) or host


def _is_ip(host: str) -> bool:
    candidate = host.strip("[]")
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return bool(re.fullmatch(r"(0x[0-9a-f]+|\d{8,10})", candidate))
    return True


@lru_cache(maxsize=16384)
def url_info(url: str) -> UrlInfo | None:
    """Split *url*; ``None`` when it has no usable host."""
    try:
        parts = urlsplit(url.strip())
        host = (parts.hostname or "").rstrip(".")
        port = parts.port
    except ValueError:
        return None
    if not host:
        return None
    unicode_host = _to_unicode(host)
    domain = org_domain(host)
    return UrlInfo(
        scheme=parts.scheme.lower(),
        host=host,
        domain=domain,
        port=port,
        is_ip=_is_ip(host),
        is_punycode="xn--" in host,
        mixed_script=_mixed_script(unicode_host),
        has_at="@" in parts.netloc,
        n_subdomains=max(0, host.count(".") - domain.count(".")),
        path_len=len(parts.path) + len(parts.query),
        unicode_host=unicode_host,
    )


def _to_unicode(host: str) -> str:
    if "xn--" not in host:
        return host
    labels = []
    for label in host.split("."):
        try:
            labels.append(label.encode("ascii").decode("idna"))
        except (UnicodeError, ValueError):
            labels.append(label)
    return ".".join(labels)


def _mixed_script(host: str) -> bool:
    scripts = set()
    for ch in host:
        if ch.isalpha():
            scripts.add(_script(ch))
    return len(scripts) > 1


def _script(ch: str) -> str:
    if ch.isascii():
        return "LATIN"
    try:
        name = unicodedata.name(ch)
    except ValueError:
        return "OTHER"
    return name.split(" ", 1)[0]


# Characters that render like Latin letters, and digit swaps kits use.
# The table is made of lookalikes on purpose:
# ruff: noqa: RUF001
_CONFUSABLE = str.maketrans(
    {
        "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "у": "y", "х": "x",
        "і": "i", "ј": "j", "ԁ": "d", "ո": "n", "ѕ": "s", "ɡ": "g", "ο": "o",
        "α": "a", "ν": "v", "τ": "t", "κ": "k", "ι": "i", "ρ": "p", "ѵ": "v",
        "0": "o", "1": "l", "3": "e", "5": "s", "ı": "i", "ӏ": "l",
    }
)  # fmt: skip


def skeleton(label: str) -> str:
    """Map a domain label to what it looks like to a hurried reader."""
    text = unicodedata.normalize("NFKC", label.lower()).translate(_CONFUSABLE)
    text = text.replace("rn", "m").replace("vv", "w").replace("-", "")
    return "".join(ch for ch in unicodedata.normalize("NFKD", text) if ch.isascii())


@lru_cache(maxsize=16384)
def lookalike_of(domain: str, targets: frozenset[str]) -> str:
    """Name the target whose label *domain* imitates without being it."""
    if not domain or domain in targets:
        return ""
    label, _, suffix = _to_unicode(domain).partition(".")
    shape = skeleton(label)
    # Only labels within one letter of the shape's length can match; they
    # are tried in the order of _targets_by_length, so the answer never varies.
    by_length = _targets_by_length(targets, suffix)
    size = len(shape)
    candidates = sorted(
        by_length.get(size - 1, [])
        + by_length.get(size, [])
        + by_length.get(size + 1, [])
    )
    for _, target, target_label in candidates:
        if target == domain:
            continue
        if shape == target_label and label != target_label:
            return target
        if len(target_label) >= 6 and _one_edit(shape, target_label):
            return target
    return ""


@lru_cache(maxsize=256)
def _targets_by_length(
    targets: frozenset[str], suffix: str
) -> dict[int, list[tuple[int, str, str]]]:
    """(rank, target, label) by label length; the same suffix ranks first."""
    ordered = sorted(targets, key=lambda t: (not t.endswith("." + suffix), t))
    index: dict[int, list[tuple[int, str, str]]] = {}
    for rank, target in enumerate(ordered):
        target_label = target.split(".", 1)[0]
        if len(target_label) >= 4:
            index.setdefault(len(target_label), []).append((rank, target, target_label))
    return index


def _one_edit(a: str, b: str) -> bool:
    """True if *a* and *b* differ by exactly one insert, delete or swap."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diffs = [i for i in range(len(a)) if a[i] != b[i]]
        if len(diffs) == 1:
            return True
        return (
            len(diffs) == 2
            and diffs[1] == diffs[0] + 1
            and a[diffs[0]] == b[diffs[1]]
            and a[diffs[1]] == b[diffs[0]]
        )
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    return any(long_[:i] + long_[i + 1 :] == short for i in range(len(long_)))


def brand_in_host(info: UrlInfo) -> str:
    """Name a brand written into a host that the brand does not own."""
    if info.domain in BRAND_DOMAINS:
        return ""
    host = info.unicode_host.lower()
    for brand in BRAND_NAMES:
        if brand in host:
            return brand
    return ""


def is_shortener(info: UrlInfo) -> bool:
    return info.domain in SHORTENER_DOMAINS or info.host in SHORTENER_DOMAINS


def is_redirector(url: str, info: UrlInfo) -> bool:
    """An open redirector or a URL carrying another URL in its query."""
    if info.host in REDIRECTOR_HOSTS:
        return True
    lowered = unquote(url.lower())
    return bool(
        re.search(r"[?&][a-z_]*(url|redirect|goto|dest|target|next)=https?:", lowered)
    )
