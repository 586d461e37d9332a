"""Sender authentication: DKIM with dkimpy, and trusted Authentication-Results.

DNS is reached only through an injectable lookup function. Lookups have a
timeout and a bounded cache, so a slow resolver costs one message at most
``timeout`` seconds once per key, and tests and offline runs pass a stub.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import dkim

__all__ = ["AuthResult", "DkimVerifier", "DnsLookup", "trusted_auth_results"]

log = logging.getLogger(__name__)

# dkimpy's lookup signature: name (bytes), timeout (seconds) -> TXT bytes.
DnsLookup = Callable[..., bytes | None]

UNKNOWN, FAIL, PASS = -1, 0, 1


@dataclass(frozen=True)
class AuthResult:
    """Authentication outcome: -1 unknown, 0 fail, 1 pass for each method."""

    dkim: int = UNKNOWN
    spf: int = UNKNOWN
    dmarc: int = UNKNOWN


class DkimVerifier:
    """Verify the first DKIM signature of a message, with a cached lookup."""

    def __init__(
        self,
        lookup: DnsLookup | None,
        timeout: float = 3.0,
        cache_size: int = 4096,
        cache_ttl: float = 3600.0,
    ) -> None:
        self._lookup = lookup
        self._timeout = timeout
        self._cache: OrderedDict[bytes, tuple[float, bytes | None]] = OrderedDict()
        self._cache_size = cache_size
        self._cache_ttl = cache_ttl

    def verify(self, raw: bytes) -> int:
        """Return PASS, FAIL or UNKNOWN (no signature, no DNS, or an error)."""
        if self._lookup is None or b"dkim-signature:" not in raw[:65536].lower():
            return UNKNOWN
        try:
            ok = dkim.verify(raw, dnsfunc=self._cached_lookup, timeout=self._timeout)
        except Exception as exc:  # dkimpy raises many types on hostile input
            log.debug("DKIM verification error: %s", exc)
            return UNKNOWN
        return PASS if ok else FAIL

    def _cached_lookup(self, name: bytes, timeout: float = 5.0) -> bytes | None:
        now = time.monotonic()
        hit = self._cache.get(name)
        if hit is not None and now - hit[0] < self._cache_ttl:
            self._cache.move_to_end(name)
            return hit[1]
        assert self._lookup is not None
        value = self._lookup(name, timeout=min(timeout, self._timeout))
        self._cache[name] = (now, value)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return value


def system_dns_lookup(name: bytes, timeout: float = 5.0) -> bytes | None:
    """dkimpy's own resolver (dnspython), for serving with real DNS."""
    return dkim.dnsplug.get_txt(name, timeout=timeout)  # type: ignore[no-any-return]  # untyped library


_METHOD = re.compile(r"\b(dkim|spf|dmarc)\s*=\s*([a-z]+)", re.I)


def trusted_auth_results(
    values: Iterable[str], authserv_ids: frozenset[str]
) -> AuthResult:
    """Read SPF/DKIM/DMARC from headers whose authserv-id is trusted.

    Anyone can write an ``Authentication-Results`` header, so only those of
    a configured upstream (RFC 8601 section 5) are believed.
    """
    found: dict[str, int] = {}
    for value in values:
        authserv = value.split(";", 1)[0].strip().split()[0:1]
        if not authserv or authserv[0].lower() not in authserv_ids:
            continue
        for method, result in _METHOD.findall(value):
            found.setdefault(method.lower(), PASS if result.lower() == "pass" else FAIL)
    return AuthResult(
        dkim=found.get("dkim", UNKNOWN),
        spf=found.get("spf", UNKNOWN),
        dmarc=found.get("dmarc", UNKNOWN),
    )
