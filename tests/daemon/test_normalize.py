"""What is removed before features: the receiving site's headers, list footers."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st
from phishgate.daemon.normalize import (
    header_end,
    strip_list_footers,
    strip_site_headers,
)

_BLANK_LINE = re.compile(rb"\r?\n\r?\n")


@given(st.lists(st.sampled_from([b"\r", b"\n", b"a", b":", b" "]), max_size=40))
def test_header_end_is_the_first_blank_line(pieces: list[bytes]) -> None:
    """The offset of the first ``\\r?\\n\\r?\\n``, on any mix of CR, LF
    and text."""
    raw = b"".join(pieces)
    match = _BLANK_LINE.search(raw)
    assert header_end(raw) == (match.start() if match else -1)


def test_site_headers_go_and_the_body_stays() -> None:
    """Received and Delivered-To are the receiving site's; the body is kept
    byte for byte, blank line included, with LF or CRLF line ends."""
    for eol in (b"\n", b"\r\n"):
        raw = eol.join(
            [
                b"From bounce@example.org Mon Jan  1 00:00:00 2024",
                b"Received: from mx.site.test",
                b"  by mail.site.test",
                b"Delivered-To: ann@site.test",
                b"From: Bob <bob@example.org>",
                b"Subject: hello",
                b"",
                b"Received: not a header here",
                b"",
            ]
        )
        stripped, auth = strip_site_headers(raw)
        assert auth == []
        assert b"site.test" not in stripped.split(eol + eol)[0]
        assert stripped.startswith(b"From: Bob")
        assert stripped.endswith(eol + eol + b"Received: not a header here" + eol)


def test_list_footers_are_removed_quoted_or_not() -> None:
    """A Mailman footer and the same footer quoted in a reply both go."""
    rule = "_" * 40
    text = (
        "Thanks, that works.\n"
        f"> {rule}\n> Cake mailing list\n> Cake@lists.example.net\n"
        "Regards\n"
        f"{rule}\nCake mailing list\nCake@lists.example.net\n"
    )
    assert strip_list_footers(text) == "Thanks, that works.\nRegards\n"
    assert strip_list_footers("no footer\n") == "no footer\n"
