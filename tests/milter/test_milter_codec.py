"""Codec tests: round trips, split input, garbage."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from milter_mta import postfix_session
from phishgate.milter import protocol as p
from phishgate.milter.actions import (
    Accept,
    AddHeader,
    AddRecipient,
    ChangeHeader,
    Continue,
    DeleteRecipient,
    Discard,
    InsertHeader,
    Quarantine,
    Reject,
    ReplaceBody,
    ReplyCode,
    TempFail,
)
from phishgate.milter.codec import (
    Abort,
    Body,
    Command,
    Connect,
    Data,
    Decoder,
    EndOfHeaders,
    EndOfMessage,
    Header,
    Helo,
    Macro,
    Mail,
    OptNeg,
    OptNegReply,
    OtherReply,
    Progress,
    ProtocolError,
    Quit,
    QuitNoClose,
    Rcpt,
    Reply,
    ReplyDecoder,
    Skip,
    Unknown,
    encode_command,
    encode_optneg_reply,
    encode_quarantine,
    encode_replace_body,
    encode_reply,
    encode_replycode,
)

EVERY_COMMAND: list[Command] = [
    OptNeg(6, 0x1FF, 0x1FFFFF),
    Macro(p.SMFIC_CONNECT, {"j": "mx.test", "{daemon_name}": "smtpd"}),
    Macro(p.SMFIC_BODYEOB, {}),
    Connect("client.test", p.SMFIA_INET, 25, "192.0.2.1"),
    Connect("client6.test", p.SMFIA_INET6, 587, "2001:db8::1"),
    Connect("local", p.SMFIA_UNIX, 0, "/run/socket"),
    Connect("unknown", p.SMFIA_UNKNOWN),
    Helo("client.test"),
    Mail(("<a@b.test>", "SIZE=10")),
    Mail(("<>",)),
    Rcpt(("<c@d.test>", "NOTIFY=NEVER", "ORCPT=rfc822;c@d.test")),
    Header("Subject", "Gr\udcfc\udcdfe caf\u00e9"),
    Header("X-Empty", ""),
    EndOfHeaders(),
    Body(b"line one\r\n\x00\xff binary\r\n"),
    EndOfMessage(),
    EndOfMessage(b"last chunk\r\n"),
    Abort(),
    Quit(),
    QuitNoClose(),
    Data(),
    Unknown("XFOO bar"),
]

EVERY_REPLY: list[Reply] = [
    Continue(),
    Accept(),
    Reject(),
    Discard(),
    TempFail(),
    ReplyCode(550, "5.7.1", "Phishing 100% sure"),
    ReplyCode(451, "", "try later"),
    ReplyCode(554),
    AddHeader("X-Phishgate-Score", "0.97"),
    InsertHeader(0, "X-First", "top"),
    ChangeHeader(1, "Subject", "[PHISH] hello"),
    ChangeHeader(2, "X-Old", ""),
    ReplaceBody(b"new body\r\n"),
    Quarantine("phishing score 0.97"),
    Progress(),
    Skip(),
    OptNegReply(6, 0x31, 0x1FF000),
    OptNegReply(6, 0x131, 0xFF000, {p.SMFIM_CONNECT: "j", p.SMFIM_EOM: "i {x}"}),
    AddRecipient("<x@y.test>"),
    DeleteRecipient("<phish@y.test>"),
    OtherReply(p.SMFIR_ADDRCPT_PAR, b"<x@y.test>\0NOTIFY=NEVER\0"),
]


def _stream(commands: list[Command]) -> bytes:
    return b"".join(encode_command(command) for command in commands)


@pytest.mark.parametrize("command", EVERY_COMMAND, ids=repr)
def test_command_round_trip(command: Command) -> None:
    """Every command encodes and decodes back to an equal command."""
    assert Decoder().feed(encode_command(command)) == [command]


@pytest.mark.parametrize("reply", EVERY_REPLY, ids=repr)
def test_reply_round_trip(reply: Reply) -> None:
    """Every reply encodes and decodes back to an equal reply."""
    assert ReplyDecoder().feed(encode_reply(reply)) == [reply]


def test_session_split_at_every_byte_boundary() -> None:
    """A Postfix session cut in two at any byte gives the same commands."""
    commands = postfix_session()
    stream = _stream(commands)
    for cut in range(len(stream) + 1):
        decoder = Decoder()
        assert decoder.feed(stream[:cut]) + decoder.feed(stream[cut:]) == commands


def test_session_fed_one_byte_at_a_time() -> None:
    """A Postfix session fed byte by byte gives the same commands."""
    commands = postfix_session()
    stream = _stream(commands)
    decoder = Decoder()
    decoded = [c for i in range(len(stream)) for c in decoder.feed(stream[i : i + 1])]
    assert decoded == commands


def test_replies_split_at_every_byte_boundary() -> None:
    """The reply stream, cut anywhere, decodes to the same replies."""
    stream = b"".join(encode_reply(reply) for reply in EVERY_REPLY)
    for cut in range(len(stream) + 1):
        decoder = ReplyDecoder()
        assert decoder.feed(stream[:cut]) + decoder.feed(stream[cut:]) == EVERY_REPLY


def test_zero_length_is_an_error() -> None:
    """A packet length of 0 is a protocol error."""
    with pytest.raises(ProtocolError, match="length 0"):
        Decoder().feed(b"\0\0\0\0")


def test_unknown_command_is_an_error() -> None:
    """An unknown command byte is refused as soon as it arrives."""
    with pytest.raises(ProtocolError, match="unknown packet code"):
        Decoder().feed(b"\0\0\0\x05Z")


def test_two_gigabyte_length_refused_from_header_alone() -> None:
    """A 2 GB length field fails on the 4-byte header, before any buffering."""
    with pytest.raises(ProtocolError, match="over"):
        Decoder().feed(struct.pack("!I", 2**31))


def test_length_above_configured_limit() -> None:
    """The packet limit is configurable."""
    packet = encode_command(Body(b"x" * 100))
    assert Decoder(max_packet=101).feed(packet) == [Body(b"x" * 100)]
    with pytest.raises(ProtocolError):
        Decoder(max_packet=100).feed(packet)


def test_http_request_is_garbage() -> None:
    """Someone speaking HTTP to the milter port is refused at once."""
    with pytest.raises(ProtocolError):
        Decoder().feed(b"GET / HTTP/1.1\r\n\r\n")


@pytest.mark.parametrize(
    "packet",
    [
        b"\0\0\0\x05O\0\0\0\x06",
        b"\0\0\0\x04LSub",
        b"\0\0\0\x09LSubject\0",
        b"\0\0\0\x05Chost",
        b"\0\0\0\x07Chost\0X",
        b"\0\0\0\x04DCa\0",
        b"\0\0\0\x01D",
        b"\0\0\0\x02Nx",
        b"\0\0\0\x02M\0",
    ],
    ids=repr,
)
def test_malformed_payload_is_an_error(packet: bytes) -> None:
    """Short or badly terminated payloads raise ProtocolError."""
    with pytest.raises(ProtocolError):
        Decoder().feed(packet)


def test_decoder_stays_broken_after_an_error() -> None:
    """After garbage, even valid input is refused: the stream is lost."""
    decoder = Decoder()
    with pytest.raises(ProtocolError):
        decoder.feed(b"\0\0\0\0")
    with pytest.raises(ProtocolError, match="already broken"):
        decoder.feed(encode_command(Quit()))


@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_commands_or_protocol_error(data: bytes) -> None:
    """Random input never raises anything but ProtocolError."""
    with contextlib.suppress(ProtocolError):
        Decoder().feed(data)


def test_replycode_wire_format() -> None:
    """REPLYCODE is 'code xcode text' NUL-terminated, with % doubled."""
    packet = encode_replycode(550, "5.7.1", "100% phish")
    assert packet == b"\0\0\0\x17y550 5.7.1 100%% phish\0"


@pytest.mark.parametrize(
    ("code", "xcode", "text"),
    [(250, "", "ok"), (550, "4.7.1", "x"), (550, "5.7", "x"), (451, "", "a\r\nb")],
)
def test_replycode_validation(code: int, xcode: str, text: str) -> None:
    """Non-4xx/5xx codes, mismatched enhanced codes and CRLF are refused."""
    with pytest.raises(ValueError):
        encode_replycode(code, xcode, text)


@pytest.mark.parametrize(
    "reply",
    [
        AddHeader("Bad Name", "x"),
        AddHeader("", "x"),
        InsertHeader(-1, "X-A", "x"),
        ChangeHeader(1, "X:A", "x"),
        AddHeader("X-A", "nul\0"),
        Quarantine(""),
    ],
    ids=repr,
)
def test_invalid_modifications_are_refused(reply: Reply) -> None:
    """Header names must be RFC 5322 field names; reasons non-empty."""
    with pytest.raises(ValueError):
        encode_reply(reply)


def test_quarantine_wire_format() -> None:
    """QUARANTINE carries its NUL-terminated reason."""
    assert encode_quarantine("held") == b"\0\0\0\x06qheld\0"


def test_replace_body_is_chunked() -> None:
    """A large body goes out in REPLBODY packets of at most 65535 bytes."""
    body = bytes(range(256)) * 600
    replies = ReplyDecoder().feed(encode_replace_body(body))
    chunks = [reply.body for reply in replies if isinstance(reply, ReplaceBody)]
    assert len(chunks) == len(replies) == 3
    assert max(len(chunk) for chunk in chunks) == p.MILTER_CHUNK_SIZE
    assert b"".join(chunks) == body


def test_optneg_reply_with_macros_sets_setsymlist() -> None:
    """A macro request turns on SMFIF_SETSYMLIST and lists names per stage."""
    packet = encode_optneg_reply(6, p.SMFIF_ADDHDRS, 0, {p.SMFIM_EOM: ["i", "{x}"]})
    (reply,) = ReplyDecoder().feed(packet)
    assert reply == OptNegReply(
        6, p.SMFIF_ADDHDRS | p.SMFIF_SETSYMLIST, 0, {p.SMFIM_EOM: "i {x}"}
    )


def test_optneg_reply_without_macros_has_no_setsymlist() -> None:
    """No macro request, no SMFIF_SETSYMLIST and a 13-byte packet."""
    packet = encode_optneg_reply(6, p.SMFIF_ADDHDRS, 0, {})
    assert len(packet) == 4 + 13
    assert ReplyDecoder().feed(packet) == [OptNegReply(6, p.SMFIF_ADDHDRS, 0)]


def test_macro_stage() -> None:
    """A macro packet names its SMFIM_* stage by command letter."""
    assert Macro(p.SMFIC_BODYEOB, {}).stage == p.SMFIM_EOM
    assert Macro(p.SMFIC_HEADER, {}).stage is None
