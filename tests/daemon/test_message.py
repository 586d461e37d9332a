"""The parser: decoding, limits, defects, and never raising."""

from __future__ import annotations

import base64

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mailfactory import as_bytes, phish, plain
from phishgate.daemon.message import Limits, parse_message, sniff_type


def test_plain_message_fields() -> None:
    """Headers, text body and Message-ID come out decoded."""
    parsed = parse_message(as_bytes(plain()))
    assert parsed.subject == "Minutes from Tuesday"
    assert parsed.message_id == "<20240305093000.1234@example.org>"
    assert "minutes from Tuesday" in parsed.text
    assert parsed.html == []
    assert parsed.limits_hit == set()


def test_rfc2047_subject_and_wrong_charset_body() -> None:
    """Encoded words decode; a body in a wrong declared charset still decodes."""
    raw = (
        b"From: a@example.org\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
        b"Content-Type: text/plain; charset=no-such-charset\r\n\r\n"
        b"caf\xc3\xa9 ol\xe9\r\n"
    )
    parsed = parse_message(raw)
    assert parsed.subject == "Grüße"
    assert parsed.text.startswith("caf")
    assert "ol" in parsed.text


def test_base64_with_junk_is_decoded() -> None:
    """Junk characters inside base64 are skipped and recorded as a defect."""
    encoded = base64.b64encode(b"<html><body>Hello world</body></html>")
    junk = encoded[:10] + b"!!**" + encoded[10:]
    raw = (
        b"From: a@example.org\r\nContent-Type: text/html\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + junk + b"\r\n"
    )
    parsed = parse_message(raw)
    assert "Base64Junk" in parsed.defects
    assert parsed.html and "<body>" in parsed.html[0]


def test_broken_boundary_is_a_defect_not_an_error() -> None:
    """A multipart whose boundary never appears parses with a defect."""
    raw = (
        b"From: a@example.org\r\nContent-Type: multipart/mixed; boundary=XYZ\r\n\r\n"
        b"--ABC\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
    )
    parsed = parse_message(raw)
    assert parsed.defects


def _nested(depth: int) -> bytes:
    head = b"From: a@example.org\r\nSubject: nest\r\n"
    parts = []
    for level in range(depth):
        parts.append(
            b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n"
            % (level, level)
        )
    inner = b"Content-Type: text/plain\r\n\r\ndeep\r\n"
    tail = b"".join(b"\r\n--b%d--\r\n" % level for level in reversed(range(depth)))
    return head + b"".join(parts) + inner + tail


def test_thousand_nested_parts_hit_the_depth_limit() -> None:
    """1,000 nested multiparts stop at the depth limit, recorded."""
    parsed = parse_message(_nested(1000), Limits(max_depth=12))
    assert "depth" in parsed.limits_hit
    assert parsed.max_depth <= 12


def test_many_parts_hit_the_part_limit() -> None:
    """A message with more parts than allowed is cut and says so."""
    body = b"".join(
        b"--B\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % i for i in range(300)
    )
    raw = (
        b"From: a@example.org\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n"
        + body
        + b"--B--\r\n"
    )
    parsed = parse_message(raw, Limits(max_parts=50))
    assert "parts" in parsed.limits_hit
    assert parsed.n_parts == 50


def test_fifty_megabyte_message_is_cut_at_the_size_limit() -> None:
    """A 50 MB message is scanned up to the size limit, which is recorded."""
    raw = as_bytes(plain()) + b"x" * (50 * 1024 * 1024)
    parsed = parse_message(raw, Limits(max_bytes=1024 * 1024))
    assert "size" in parsed.limits_hit
    assert parsed.size == len(raw)
    assert parsed.subject == "Minutes from Tuesday"


def test_html_limit() -> None:
    """HTML beyond the HTML budget is cut."""
    big = "<p>" + "a" * 5000 + "</p>"
    raw = b"From: a@example.org\r\nContent-Type: text/html\r\n\r\n" + big.encode()
    parsed = parse_message(raw, Limits(max_html_bytes=1000))
    assert "html" in parsed.limits_hit
    assert sum(len(h) for h in parsed.html) <= 1000


def test_attachment_sniffing() -> None:
    """Attachments report declared and sniffed types and nested messages."""
    msg = phish()
    msg.add_attachment(
        b"MZ\x90\x00fake", maintype="application", subtype="pdf", filename="invoice.pdf"
    )
    msg.add_attachment(plain(), filename="fwd.eml")
    parsed = parse_message(as_bytes(msg))
    kinds = {(a.name, a.declared_type, a.sniffed_type) for a in parsed.attachments}
    assert ("invoice.pdf", "application/pdf", "exe") in kinds
    assert any(a.is_message for a in parsed.attachments)
    assert parsed.nested and parsed.nested[0].headers


def test_sniff_type() -> None:
    """Magic bytes win over names."""
    assert sniff_type(b"%PDF-1.7") == "pdf"
    assert sniff_type(b"  <!DOCTYPE html><html>") == "html"
    assert sniff_type(b"<?xml version='1.0'?><svg xmlns=") == "svg"
    assert sniff_type(b"") == "empty"


def test_mbox_line_and_site_headers_are_stripped() -> None:
    """The mbox From line and receiving-site headers never reach features."""
    raw = (
        b"From someone@example.org Mon Jan  1 00:00:00 2024\n"
        b"Received: from mx.collector.example by lfdr.de\n"
        b"Delivered-To: phishing@pot\n"
        b"X-Spam-Status: Yes, score=9\n"
        b"X-Mailer: Thunderbird\n"
        b"Authentication-Results: mx.example; dkim=pass\n"
        b"From: a@example.org\nSubject: hi\n\nbody\n"
    )
    parsed = parse_message(raw)
    names = [k.lower() for k, _ in parsed.headers]
    assert names == ["x-mailer", "from", "subject"]
    assert parsed.auth_results == ["mx.example; dkim=pass"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_parser_never_raises_on_arbitrary_bytes(raw: bytes) -> None:
    """Any bytes at all give a ParsedMessage within the limits."""
    limits = Limits(max_bytes=2048, max_parts=20, max_depth=5)
    parsed = parse_message(raw, limits)
    assert parsed.n_parts <= 20
    assert parsed.max_depth <= 5


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_parser_never_raises_on_mutated_messages(data: st.DataObject) -> None:
    """Real-looking messages with bytes flipped, cut or inserted still parse."""
    raw = bytearray(as_bytes(phish()))
    for _ in range(data.draw(st.integers(1, 20))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip":
            raw[pos] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del raw[pos : pos + data.draw(st.integers(1, 200))]
        else:
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=50))
        if not raw:
            break
    limits = Limits(max_parts=30, max_depth=6)
    parsed = parse_message(bytes(raw), limits)
    assert parsed.n_parts <= 30
