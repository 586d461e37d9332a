"""Reference lists: brands phishers imitate, shorteners, freemail, lexicons.

These are hand-picked, short and stable. They feed features only; the model
decides how much each matters.
"""

from __future__ import annotations

import functools
import re
from collections import Counter

# Brand name -> domains the brand really sends from or links to.
BRANDS: dict[str, tuple[str, ...]] = {
    "paypal": ("paypal.com", "paypal.de", "paypal.me", "paypalobjects.com"),
    "apple": ("apple.com", "icloud.com", "me.com"),
    "microsoft": (
        "microsoft.com", "office.com", "office365.com", "outlook.com", "live.com",
        "microsoftonline.com", "sharepoint.com", "onmicrosoft.com", "hotmail.com",
    ),
    "office365": ("office.com", "office365.com", "microsoft.com"),
    "outlook": ("outlook.com", "microsoft.com", "live.com"),
    "onedrive": ("onedrive.com", "live.com", "microsoft.com"),
    "sharepoint": ("sharepoint.com", "microsoft.com"),
    "google": ("google.com", "gmail.com", "googlemail.com", "youtube.com"),
    "gmail": ("gmail.com", "google.com"),
    "amazon": ("amazon.com", "amazon.de", "amazon.co.uk", "amazon.fr", "amazonses.com"),
    "netflix": ("netflix.com",),
    "facebook": ("facebook.com", "facebookmail.com", "meta.com", "fb.com"),
    "instagram": ("instagram.com", "facebookmail.com"),
    "whatsapp": ("whatsapp.com",),
    "linkedin": ("linkedin.com",),
    "dropbox": ("dropbox.com", "dropboxmail.com"),
    "docusign": ("docusign.com", "docusign.net"),
    "adobe": ("adobe.com",),
    "dhl": ("dhl.com", "dhl.de"),
    "fedex": ("fedex.com",),
    "ups": ("ups.com",),
    "usps": ("usps.com",),
    "wellsfargo": ("wellsfargo.com",),
    "chase": ("chase.com", "jpmorgan.com"),
    "citibank": ("citi.com", "citibank.com"),
    "bankofamerica": ("bankofamerica.com",),
    "barclays": ("barclays.co.uk", "barclays.com"),
    "hsbc": ("hsbc.com", "hsbc.co.uk"),
    "santander": ("santander.com", "santander.co.uk", "santander.com.br"),
    "ebay": ("ebay.com", "ebay.de", "ebay.co.uk"),
    "visa": ("visa.com",),
    "mastercard": ("mastercard.com",),
    "americanexpress": ("americanexpress.com", "aexp.com"),
    "coinbase": ("coinbase.com",),
    "binance": ("binance.com",),
    "metamask": ("metamask.io",),
    "steam": ("steampowered.com", "steamcommunity.com"),
    "spotify": ("spotify.com",),
    "yahoo": ("yahoo.com",),
    "aol": ("aol.com",),
    "irs": ("irs.gov",),
    "hmrc": ("hmrc.gov.uk", "gov.uk"),
    "correios": ("correios.com.br",),
    "itau": ("itau.com.br",),
    "bradesco": ("bradesco.com.br",),
    "nubank": ("nubank.com.br",),
    "caixa": ("caixa.gov.br",),
    "postnl": ("postnl.nl",),
    "digid": ("digid.nl",),
    "ing": ("ing.nl", "ing.com", "ing.de"),
    "sparkasse": ("sparkasse.de",),
    "postbank": ("postbank.de",),
    "laposte": ("laposte.fr", "laposte.net"),
    "ameli": ("ameli.fr",),
    "temu": ("temu.com",),
    "walmart": ("walmart.com",),
    "costco": ("costco.com",),
    "norton": ("norton.com",),
    "mcafee": ("mcafee.com",),
    "zoom": ("zoom.us",),
    "webmail": (),
    "helpdesk": (),
}  # fmt: skip

BRAND_DOMAINS = frozenset(d for ds in BRANDS.values() for d in ds)
# Short names ("ups", "ing", "visa") match too much inside hosts.
BRAND_NAMES = tuple(sorted(b for b in BRANDS if len(b) >= 5))
BRAND_LOOKALIKE_TARGETS = frozenset(
    d for d in BRAND_DOMAINS if len(d.split(".", 1)[0]) >= 5
)

SHORTENER_DOMAINS = frozenset(
    {
        "bit.ly", "tinyurl.com", "t.co", "goo.gl", "ow.ly", "is.gd", "buff.ly",
        "rebrand.ly", "cutt.ly", "shorturl.at", "rb.gy", "t.ly", "tiny.cc",
        "bl.ink", "lnkd.in", "s.id", "v.gd", "qr.ae", "shorte.st", "adf.ly",
        "bit.do", "mcaf.ee", "x.co", "tr.im", "soo.gd", "u.to", "clck.ru",
        "short.io", "urlz.fr", "tinyurl.is", "rebrandly.com", "linktr.ee",
    }
)  # fmt: skip

# Hosts whose URLs are routinely abused to bounce a reader elsewhere.
REDIRECTOR_HOSTS = frozenset(
    {
        "www.google.com", "google.com", "l.facebook.com", "lm.facebook.com",
        "www.youtube.com", "t.umblr.com", "href.li", "r.search.yahoo.com",
        "ad.doubleclick.net", "clickserve.dartsearch.net", "www.bing.com",
        "out.reddit.com", "linkedin.com", "www.linkedin.com",
    }
)  # fmt: skip

FREEMAIL_DOMAINS = frozenset(
    {
        "gmail.com", "googlemail.com", "yahoo.com", "yahoo.co.uk", "yahoo.fr",
        "hotmail.com", "hotmail.fr", "outlook.com", "live.com", "msn.com",
        "aol.com", "icloud.com", "me.com", "mail.com", "gmx.com", "gmx.de",
        "gmx.net", "web.de", "yandex.ru", "yandex.com", "mail.ru", "protonmail.com",
        "proton.me", "zoho.com", "qq.com", "163.com", "126.com", "uol.com.br",
        "bol.com.br", "terra.com.br", "libero.it", "orange.fr", "free.fr",
        "laposte.net", "t-online.de", "rediffmail.com", "yahoo.com.br",
    }
)  # fmt: skip

RISKY_TLDS = frozenset(
    {
        "xyz", "top", "club", "online", "site", "icu", "buzz", "live", "shop",
        "click", "link", "work", "rest", "fit", "tk", "ml", "ga", "cf", "gq",
        "ru", "cn", "su", "pw", "cc", "ws", "info", "biz", "monster", "cyou",
        "sbs", "cfd", "quest", "store", "digital", "life", "today", "vip",
    }
)  # fmt: skip

# Lexicons, several languages each (en, de, fr, pt, es, nl, it). Stems match
# as word prefixes; keep them specific enough not to fire on ordinary mail.
LEXICONS: dict[str, tuple[str, ...]] = {
    "urgency": (
        "urgent*", "immediately", "within 24 hours", "within 48 hours", "expire*",
        "suspend*", "final notice", "last warning", "act now", "asap", "deadline",
        "sofort*", "dringend*", "innerhalb von 24", "gesperrt", "letzte mahnung",
        "urgence", "immédiatement", "expir*", "suspendu*", "dernier avis",
        "urgente", "imediatamente", "bloquead*", "suspens*", "prazo", "expira*",
        "inmediatamente", "bloqueada", "onmiddellijk", "verloopt",
        "geblokkeerd", "immediatamente", "scadenza", "bloccat*", "sospes*",
    ),
    "credential": (
        "password*", "passcode", "verify your", "confirm your", "login", "log in",
        "sign in", "credentials", "account verification", "validate your",
        "update your account", "unusual activity", "unusual sign", "security alert",
        "passwort", "kennwort", "bestätigen sie", "anmelden", "konto",
        "mot de passe", "vérifiez", "connexion", "identifiant*", "compte",
        "senha", "verifique", "confirme", "acesse", "conta", "contraseña",
        "cuenta", "wachtwoord", "inloggen", "bevestig*", "account",
        "credenziali", "accedi", "mailbox", "webmail", "quota",
    ),
    "payment": (
        "invoice*", "payment*", "bank", "credit card", "wire transfer", "refund*",
        "billing", "transaction*", "bitcoin", "crypto*", "wallet", "overdue",
        "rechnung*", "zahlung*", "überweisung", "kreditkarte", "erstattung",
        "facture", "paiement", "virement", "remboursement", "carte bancaire",
        "fatura", "pagamento", "boleto", "reembolso", "cartão", "pix",
        "factura", "pago", "transferencia", "tarjeta", "betaling", "factuur",
        "terugbetaling", "fattura", "rimborso", "bonifico", "carta di credito",
    ),
    "prize": (
        "congratulation*", "winner*", "you have won", "prize*", "reward*",
        "gift card", "free gift", "lottery", "claim your", "exclusive offer",
        "gewinn*", "gewonnen", "herzlichen glückwunsch", "gutschein*",
        "félicitations", "gagné", "gagnant*", "cadeau*", "parabéns", "ganhou",
        "prêmio", "premio", "felicidades", "ganador", "gefeliciteerd",
        "prijs", "complimenti", "vinto", "vincitore", "omaggio",
    ),
    "delivery": (
        "package", "parcel*", "delivery", "shipment", "tracking", "customs",
        "paket*", "sendung*", "zustellung", "colis", "livraison", "encomenda",
        "entrega", "paquete", "envío", "pakket*", "bezorging", "pacco", "consegna",
    ),
    # what credential phish threatens or demands about an account
    "threat": (
        "verify your account", "verify your identity", "confirm your identity",
        "confirm your account", "account will be", "account has been",
        "account is suspended", "account suspended", "has been suspended",
        "has been locked", "has been limited", "temporarily locked",
        "password expires", "password will expire", "password has expired",
        "mailbox is full", "mailbox quota", "storage is full", "unusual sign",
        "unusual activity", "suspicious activity", "unauthorized access",
        "reactivate", "restore access", "restore your", "update your payment",
        "update your billing", "payment information", "payment details",
        "failed payment", "payment was declined", "pending messages",
        "undelivered messages", "ihr konto wurde", "konto gesperrt",
        "konto verifizieren", "votre compte a été", "votre compte sera",
        "sua conta foi", "sua conta será", "su cuenta ha sido",
        "uw account is", "il tuo account",
    ),
    # salutations that show the sender does not know the reader
    "greeting": (
        "dear customer", "dear user", "dear client", "dear member",
        "dear valued", "dear account", "dear sir", "dear madam",
        "dear beneficiary", "dear friend", "hello user", "dear email",
        "dear mailbox", "dear webmail", "sehr geehrter kunde",
        "sehr geehrte kundin", "lieber kunde", "liebe kundin", "cher client",
        "chère cliente", "cher utilisateur", "prezado cliente",
        "prezada cliente", "caro cliente", "estimado cliente",
        "querido cliente", "beste klant", "gentile cliente",
    ),
}  # fmt: skip

# How a sender offers a way out of its mailings (link text or URL).
UNSUBSCRIBE = re.compile(
    r"unsubscri|opt[ -]?out|optout|remove me|abbestell|abmelden|"
    r"d[ée]sabonn|d[ée]sinscri|descadastr|cancelar (?:a )?(?:inscri|suscri)|"
    r"darse de baja|afmelden|uitschrijven|disiscri|cancella l",
    re.I,
)

_UNSUBSCRIBE_LOWER = re.compile(UNSUBSCRIBE.pattern)
"""UNSUBSCRIBE for lower-cased text: without re.I the engine skips ahead on
the first letters, about eight times faster on whole message bodies."""


def mentions_unsubscribe(text: str) -> bool:
    """Whether *text* offers to unsubscribe (UNSUBSCRIBE, case-insensitive)."""
    if any(letter in text for letter in _FOLDED_OTHERWISE):
        return UNSUBSCRIBE.search(text) is not None
    return _UNSUBSCRIBE_LOWER.search(text.lower()) is not None


_FOLDED_OTHERWISE = ("\u0130", "\u0131", "\u017f")
"""The letters re.I matches to the pattern's letters where str.lower() does
not (capital I with a dot and dotless i to i, long s to s; found by trying
every code point)."""


_TOKEN = re.compile(r"[^\W\d_]{2,24}")


Entry = tuple[tuple[str, ...], bool, str]
"""(words, last word is a prefix, category) of one lexicon entry."""


def _entries() -> list[Entry]:
    entries: list[Entry] = []
    seen = set()
    for category, listed in LEXICONS.items():
        for entry in listed:
            prefix = entry.endswith("*")
            tokens = tuple(_TOKEN.findall(entry.rstrip("*").lower()))
            if (tokens, category) in seen:
                continue
            seen.add((tokens, category))
            entries.append((tokens, prefix, category))
    return entries


def _index_lexicons() -> tuple[
    dict[str, list[str]], dict[str, list[tuple[str, str]]], dict[str, list[Entry]]
]:
    """Three indexes, so a word costs a dict lookup or two, not a scan.

    Single words by the word itself; single-word prefixes by their first two
    letters; phrases by their first word (only a phrase's last word may be a
    prefix).
    """
    exact: dict[str, list[str]] = {}
    prefixes: dict[str, list[tuple[str, str]]] = {}
    phrases: dict[str, list[Entry]] = {}
    for tokens, prefix, category in _entries():
        if len(tokens) > 1:
            phrases.setdefault(tokens[0], []).append((tokens, prefix, category))
        elif prefix:
            prefixes.setdefault(tokens[0][:2], []).append((tokens[0], category))
        else:
            exact.setdefault(tokens[0], []).append(category)
    return exact, prefixes, phrases


_EXACT, _PREFIXES, _PHRASES = _index_lexicons()


def lexicon_counts(words: list[str]) -> dict[str, int]:
    """Count lexicon hits per category in a list of lower-case words.

    An entry ending in ``*`` matches as a prefix of its last word; phrases
    match consecutive words (digits are not words, so "within 24 hours" is
    "within hours").
    """
    counts = dict.fromkeys(LEXICONS, 0)
    # Each distinct word once: a body repeats most of its words.
    for word, times in Counter(words).items():
        for category in _word_categories(word):
            counts[category] += times
        if phrases := _PHRASES.get(word):
            at = -1
            for _ in range(times):
                at = words.index(word, at + 1)
                for tokens, prefix, category in phrases:
                    if _matches(words, at, tokens, prefix):
                        counts[category] += 1
    return counts


@functools.lru_cache(maxsize=1 << 16)
def _word_categories(word: str) -> tuple[str, ...]:
    """The categories one word counts for by itself (exact, or by prefix)."""
    found = list(_EXACT.get(word, ()))
    found += [c for stem, c in _PREFIXES.get(word[:2], ()) if word.startswith(stem)]
    return tuple(found)


def _matches(words: list[str], i: int, tokens: tuple[str, ...], prefix: bool) -> bool:
    last = len(tokens) - 1
    if i + last >= len(words):
        return False
    for k in range(1, last):
        if words[i + k] != tokens[k]:
            return False
    if prefix:
        return words[i + last].startswith(tokens[last])
    return words[i + last] == tokens[last]


def words_of(text: str) -> list[str]:
    """Lower-case words of *text*, as the lexicons and hashing see them."""
    return _TOKEN.findall(text.lower())
