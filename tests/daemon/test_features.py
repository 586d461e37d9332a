"""Each feature family on small crafted messages."""

from __future__ import annotations

from pathlib import Path

import dkim
import numpy as np
import pytest
from mailfactory import as_bytes, html, phish, plain
from phishgate.daemon import brands
from phishgate.daemon.auth import (
    FAIL,
    PASS,
    UNKNOWN,
    DkimVerifier,
    trusted_auth_results,
)
from phishgate.daemon.features import FEATURE_NAMES, FeatureExtractor, Features
from phishgate.daemon.message import parse_message
from phishgate.daemon.urls import lookalike_of, org_domain, skeleton

DATA = Path(__file__).resolve().parent.parent / "data"


def extract(raw: bytes, extractor: FeatureExtractor | None = None) -> Features:
    return (extractor or FeatureExtractor()).extract(parse_message(raw), raw)


def test_vector_shape_and_determinism() -> None:
    """The vector has the schema's width and is the same on every call."""
    raw = as_bytes(phish())
    a, b = extract(raw), extract(raw)
    assert a.values.shape == (len(FEATURE_NAMES),)
    assert np.array_equal(a.values, b.values)


def test_link_text_mismatch() -> None:
    """Link text showing one domain while the href goes to another."""
    raw = as_bytes(
        html('<a href="https://evil.example.net/x">https://www.mybank.com/login</a>')
    )
    feats = extract(raw)
    assert feats.get("url_text_mismatch") == 1
    assert "mybank.com" in feats.facts["url_text_mismatch"]
    honest = extract(
        as_bytes(html('<a href="https://www.mybank.com/a">mybank.com</a>'))
    )
    assert honest.get("url_text_mismatch") == 0


def test_ip_url() -> None:
    """A link to a bare IP address is counted."""
    feats = extract(as_bytes(plain("Go to http://203.0.113.9/login now\n")))
    assert feats.get("url_ip") == 1
    assert extract(as_bytes(plain("See https://example.org/\n"))).get("url_ip") == 0


def test_punycode_lookalike_of_a_brand() -> None:
    """A punycode host that renders like paypal.com is a brand lookalike."""
    host = "xn--pypal-4ve.com"  # "paypal" with a Cyrillic first a
    feats = extract(as_bytes(html(f'<a href="https://{host}/signin">Sign in</a>')))
    assert feats.get("url_punycode") == 1
    assert feats.get("url_lookalike_brand") == 1
    assert "paypal.com" in feats.facts["url_lookalike_brand"]


def test_lookalike_rules() -> None:
    """Digit swaps and one-letter edits imitate; the real domain does not."""
    targets = frozenset({"paypal.com", "microsoft.com"})
    assert lookalike_of("paypa1.com", targets) == "paypal.com"
    assert lookalike_of("rnicrosoft.com", targets) == "microsoft.com"
    assert lookalike_of("paypal.com", targets) == ""
    assert lookalike_of("example.org", targets) == ""
    assert skeleton("раураl") == "paypal"  # noqa: RUF001 - Cyrillic lookalikes on purpose


def test_reply_to_mismatch() -> None:
    """Reply-To on another organisation's domain."""
    feats = extract(as_bytes(plain(reply_to="someone@other.example.net")))
    assert feats.get("reply_to_mismatch") == 1
    same = extract(as_bytes(plain(reply_to="list@lists.example.org")))
    assert same.get("reply_to_mismatch") == 0


def test_html_form_posting_password_off_domain() -> None:
    """A form with a password field posting to a foreign host."""
    feats = extract(as_bytes(phish()))
    assert feats.get("html_forms") == 1
    assert feats.get("html_password") == 1
    assert feats.get("html_form_offdomain") == 1
    assert "collect.evil-host.top" in feats.facts["html_form_offdomain"]
    assert feats.get("html_hidden_chars") > 0


def test_html_attachment() -> None:
    """An HTML attachment counts, whatever its declared type."""
    msg = plain()
    msg.add_attachment(
        b"<html><form action='https://x.example'></form></html>",
        maintype="application",
        subtype="octet-stream",
        filename="Remittance.pdf.htm",
    )
    feats = extract(as_bytes(msg))
    assert feats.get("att_html") == 1
    assert feats.get("att_double_ext") == 1
    assert extract(as_bytes(plain())).get("att_html") == 0


def test_display_name_brand_and_address() -> None:
    """A display name that claims a brand or shows another address."""
    feats = extract(
        as_bytes(plain(sender='"service@paypal.com" <x@mailer.example.net>'))
    )
    assert feats.get("from_display_has_addr") == 1
    assert feats.get("from_display_addr_mismatch") == 1
    assert feats.get("from_display_brand") == 1


def test_lexicons_several_languages() -> None:
    """Urgency and credential words count in English, German and Portuguese."""
    text = "Bitte sofort Ihr Passwort bestätigen. Verifique sua senha imediatamente."
    feats = extract(as_bytes(plain(text)))
    assert feats.get("lex_urgency") >= 2
    assert feats.get("lex_credential") >= 2


def test_account_threat_and_generic_greeting() -> None:
    """Threats about the account and a greeting that names no one are counted."""
    text = "Dear customer, your account has been suspended. Verify your account."
    feats = extract(as_bytes(plain(text)))
    assert feats.get("lex_threat") >= 2
    assert feats.get("lex_greeting") == 1
    assert extract(as_bytes(plain())).get("lex_threat") == 0


def test_unsubscribe_link_and_text() -> None:
    """A newsletter's way out counts as an unsubscribe link and wording."""
    raw = as_bytes(
        html(
            '<p>News</p><a href="https://news.example.com/u?id=1">Unsubscribe</a>'
            '<a href="https://news.example.com/optout">here</a>',
            text_body="News. To unsubscribe, follow the link.",
        )
    )
    feats = extract(raw)
    assert feats.get("url_unsubscribe") == 2
    assert feats.get("text_unsubscribe") == 1
    assert extract(as_bytes(plain())).get("text_unsubscribe") == 0


def test_brand_named_but_links_go_elsewhere() -> None:
    """A brand in the text with no link to it is flagged; its own links are not."""
    elsewhere = as_bytes(
        plain("Your PayPal payment failed: https://pay-check.example.net/x\n")
    )
    feats = extract(elsewhere)
    assert feats.get("url_brand_offdomain") == 1
    assert "paypal" in feats.facts["url_brand_offdomain"]
    own = as_bytes(plain("Your PayPal receipt: https://www.paypal.com/activity\n"))
    assert extract(own).get("url_brand_offdomain") == 0


def test_hashed_text_is_stable() -> None:
    """Text hashing uses CRC-32, so buckets do not depend on the process."""
    feats = extract(as_bytes(plain("password")))
    words = [
        n
        for n, v in zip(FEATURE_NAMES, feats.values, strict=True)
        if v and n.startswith("word_")
    ]
    # crc32(b"password") % 256 is a fixed number on every machine
    import zlib

    assert f"word_{zlib.crc32(b'password') % 256}" in words


def _signed(key: bytes) -> bytes:
    raw = as_bytes(plain(sender="Bob <bob@example.org>"))
    sig = dkim.sign(
        raw, b"sel", b"example.org", key, include_headers=[b"from", b"subject"]
    )
    return sig + raw


def _dns(name: bytes, timeout: float = 5.0) -> bytes | None:
    if name == b"sel._domainkey.example.org.":
        pub = (DATA / "dkim-test.pub.b64").read_bytes().strip()
        return b"v=DKIM1; k=rsa; p=" + pub
    return None


def test_dkim_pass_and_fail_with_stub_dns() -> None:
    """A good signature passes, a tampered body fails, no DNS means unknown."""
    key = (DATA / "dkim-test.key").read_bytes()
    raw = _signed(key)
    verifier = DkimVerifier(_dns)
    assert extract(raw, FeatureExtractor(dkim=verifier)).get("dkim_result") == PASS
    tampered = raw.replace(b"minutes", b"payment")
    assert extract(tampered, FeatureExtractor(dkim=verifier)).get("dkim_result") == FAIL
    assert extract(raw).get("dkim_result") == UNKNOWN
    feats = extract(raw)
    assert feats.get("dkim_present") == 1
    assert feats.get("dkim_aligned") == 1


def test_dkim_lookups_are_cached() -> None:
    """The second verification of the same selector does not ask DNS again."""
    calls: list[bytes] = []

    def counting(name: bytes, timeout: float = 5.0) -> bytes | None:
        calls.append(name)
        return _dns(name, timeout)

    verifier = DkimVerifier(counting)
    raw = _signed((DATA / "dkim-test.key").read_bytes())
    assert verifier.verify(raw) == PASS
    assert verifier.verify(raw) == PASS
    assert len(calls) == 1


def test_authentication_results_only_from_trusted_authserv() -> None:
    """Only a configured authserv-id's verdicts are believed."""
    headers = [
        "mx.trusted.example; spf=pass; dkim=fail; dmarc=fail",
        "evil.example; dmarc=pass",
    ]
    result = trusted_auth_results(headers, frozenset({"mx.trusted.example"}))
    assert (result.spf, result.dkim, result.dmarc) == (PASS, FAIL, FAIL)
    untrusted = trusted_auth_results(headers, frozenset({"other.example"}))
    assert untrusted.dmarc == UNKNOWN


SITE_HEADERS = (
    b"From MAILER-DAEMON Mon Jan  1 00:00:00 2024\n"
    b"Received: from mail.sender.example by mx.lfdr.de with ESMTP id 1\n"
    b"Delivered-To: phishing@pot\n"
    b"X-Original-To: username@domain.com\n"
    b"Authentication-Results: mx.uwaterloo.ca; dkim=pass\n"
    b"X-Spam-Status: No, score=-2.0\n"
    b"X-MS-Exchange-Organization-SCL: 9\n"
    b"X-Forefront-Antispam-Report: SFV:SPM\n"
    b"List-Id: <cake.lists.bufferbloat.net>\n"
    b"ARC-Seal: i=1; a=rsa-sha256; cv=none\n"
)


@pytest.mark.parametrize("make", [plain, phish])
def test_receiving_site_headers_change_no_feature(make: object) -> None:
    """Adding a collection's receiving-site marks leaves every feature unchanged."""
    raw = as_bytes(make())  # type: ignore[operator]
    bare = extract(raw)
    marked = extract(SITE_HEADERS + raw.replace(b"\r\n", b"\n"))
    assert np.array_equal(bare.values, marked.values)


def test_list_footer_does_not_reach_text_features() -> None:
    """A Google Groups footer adds nothing to the text features."""
    body = "Hello all,\n\nthe patch is below.\n"
    footer = (
        "\n-- \nYou received this message because you are subscribed to the Google "
        'Groups "open-iscsi" group.\nTo unsubscribe from this group, send email to '
        "open-iscsi+unsubscribe@googlegroups.com.\nTo view this discussion on the "
        "web visit https://groups.google.com/d/msgid/open-iscsi/abc%40example.org.\n"
    )
    a = extract(as_bytes(plain(body)))
    b = extract(as_bytes(plain(body + footer)))
    text_slots = [
        i
        for i, n in enumerate(FEATURE_NAMES)
        if n.startswith(("word_", "bigram_", "lex_", "url_"))
    ]
    assert np.array_equal(a.values[text_slots], b.values[text_slots])


def test_hostile_nesting_is_cut_and_recorded() -> None:
    """Deeply nested unclosed tags are cut before parsing and flagged as a limit."""
    from phishgate.daemon.htmlscan import MAX_UNCLOSED_TAGS, cap_nesting

    doc = "<div>" * (MAX_UNCLOSED_TAGS * 10) + "text"
    cut, truncated = cap_nesting(doc)
    assert truncated and cut.count("<div>") == MAX_UNCLOSED_TAGS
    newsletter = "<table>" + "<tr><td>cell</td></tr>" * 5000 + "</table>"
    assert cap_nesting(newsletter) == (newsletter, False)
    feats = extract(as_bytes(html(doc)))
    assert feats.get("limit_hit") == 1


def test_scanner_skips_hashing_the_model_never_uses() -> None:
    """With a model that has no n-gram splits, the hashed columns stay zero."""
    from phishgate.daemon.model import Model
    from phishgate.daemon.scanner import Scanner

    model = Model.load()
    scanner = Scanner(model)
    assert scanner.extractor.text_hashing == model.uses_text_hashing
    values = scanner.features(as_bytes(plain("password reset now"))).values
    hashed = [i for i, n in enumerate(FEATURE_NAMES) if n.startswith("word_")]
    assert bool(values[hashed].any()) == model.uses_text_hashing


@pytest.mark.parametrize(
    "text",
    [
        "Click to UNSUBSCRIBE",
        "un\u017fubscribe here",
        "unsubscr\u0131be",
        "d\u0130siscri",
    ],
)
def test_unsubscribe_is_found_case_insensitively(text: str) -> None:
    """The fast lower-case search finds what the case-insensitive pattern finds,
    also for the letters that fold differently (long s, dotted and dotless i)."""
    assert brands.UNSUBSCRIBE.search(text)
    assert brands.mentions_unsubscribe(text)


@pytest.mark.parametrize(
    ("host", "domain"),
    [
        ("a.b.Example.CO.UK", "example.co.uk"),
        ("x.blogspot.com", "blogspot.com"),  # private suffixes are not suffixes
        ("paypal.com\u3002evil.com", "evil.com"),  # ideographic full stop
        ("paypal.com\uff0eevil.com", "evil.com"),  # fullwidth full stop
        ("example.com\u3002", "example.com"),
        ("a..example.com", "example.com"),
        ("a..com", "a..com"),  # no registered domain: the host stands
        ("foo.bar.unknowntld", "foo.bar.unknowntld"),
        ("192.0.2.7", "192.0.2.7"),
    ],
)
def test_registered_domain_sees_through_odd_dots(host: str, domain: str) -> None:
    """The registered domain, also where the dots are not ASCII full stops
    (a phishing trick: browsers take them as dots) or a label is empty."""
    assert org_domain(host) == domain
