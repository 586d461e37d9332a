"""Milter packet codec: bytes in, typed commands out, and replies back to bytes.

No I/O happens here. :class:`Decoder` is the filter side: it frames and parses
the SMFIC_* commands an MTA sends. The ``encode_*`` reply functions build the
SMFIR_* packets a filter answers with. For tests and benchmarks the MTA side is
here too: :func:`encode_command` and :class:`ReplyDecoder`.

Strings travel as NUL-terminated bytes. They are decoded as UTF-8 with
``surrogateescape``, so 8-bit header values survive a round trip unchanged.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from . import protocol as p
from .actions import (
    Accept,
    Action,
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

_UINT16 = struct.Struct("!H")
_UINT32 = struct.Struct("!I")
_OPTNEG = struct.Struct("!III")
_UINT32_MAX = 0xFFFFFFFF

_HEADER_NAME = re.compile(r"[!-9;-~]+")
"""RFC 5322 section 3.6.8 field name: printable US-ASCII except colon."""

_XCODE = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
"""RFC 3463 enhanced status code: class.subject.detail."""


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid milter packet."""


# -- Commands (MTA to filter) -------------------------------------------------


@dataclass(frozen=True)
class OptNeg:
    """SMFIC_OPTNEG: the MTA's protocol version and what it offers."""

    version: int
    actions: int
    protocol: int


@dataclass(frozen=True)
class Macro:
    """SMFIC_MACRO: macro values for the command with letter ``command``.

    Names are kept as sent, e.g. ``i`` or ``{auth_authen}``.
    """

    command: bytes
    macros: Mapping[str, str]

    @property
    def stage(self) -> int | None:
        """The SMFIM_* stage these macros belong to, if it is one."""
        return p.MACRO_STAGE_BY_COMMAND.get(self.command)


@dataclass(frozen=True)
class Connect:
    """SMFIC_CONNECT: the SMTP client. ``family`` is one of the SMFIA_* letters."""

    hostname: str
    family: str
    port: int = 0
    address: str = ""


@dataclass(frozen=True)
class Helo:
    """SMFIC_HELO: the HELO/EHLO argument."""

    name: str


@dataclass(frozen=True)
class Mail:
    """SMFIC_MAIL: the sender (``<a@b>``) then its ESMTP arguments."""

    args: tuple[str, ...]


@dataclass(frozen=True)
class Rcpt:
    """SMFIC_RCPT: one recipient (``<c@d>``) then its ESMTP arguments."""

    args: tuple[str, ...]


@dataclass(frozen=True)
class Header:
    """SMFIC_HEADER: one header field."""

    name: str
    value: str


@dataclass(frozen=True)
class EndOfHeaders:
    """SMFIC_EOH."""


@dataclass(frozen=True)
class Body:
    """SMFIC_BODY: one chunk of the body, CRLF line ends."""

    chunk: bytes


@dataclass(frozen=True)
class EndOfMessage:
    """SMFIC_BODYEOB; may carry a last body chunk."""

    chunk: bytes = b""


@dataclass(frozen=True)
class Abort:
    """SMFIC_ABORT: forget the current message."""


@dataclass(frozen=True)
class Quit:
    """SMFIC_QUIT: the MTA is done with this connection."""


@dataclass(frozen=True)
class QuitNoClose:
    """SMFIC_QUIT_NC: a new SMTP session follows on this connection."""


@dataclass(frozen=True)
class Data:
    """SMFIC_DATA: the client sent DATA."""


@dataclass(frozen=True)
class Unknown:
    """SMFIC_UNKNOWN: an SMTP command the MTA did not recognise."""

    command: str


Command = (
    OptNeg
    | Macro
    | Connect
    | Helo
    | Mail
    | Rcpt
    | Header
    | EndOfHeaders
    | Body
    | EndOfMessage
    | Abort
    | Quit
    | QuitNoClose
    | Data
    | Unknown
)


# -- Replies that are not end-of-message actions (filter to MTA) --------------


@dataclass(frozen=True)
class OptNegReply:
    """The filter's SMFIC_OPTNEG answer; ``macros`` maps SMFIM_* to names."""

    version: int
    actions: int
    protocol: int
    macros: Mapping[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Progress:
    """SMFIR_PROGRESS: still working, restart the MTA's timeout."""


@dataclass(frozen=True)
class Skip:
    """SMFIR_SKIP: send no more body chunks."""


@dataclass(frozen=True)
class OtherReply:
    """A valid reply this codec does not model (recipient changes, ...)."""

    code: bytes
    data: bytes


Reply = Action | OptNegReply | Progress | Skip | OtherReply


# -- Framing ------------------------------------------------------------------

_REPLY_CODES = frozenset(
    {
        p.SMFIC_OPTNEG,
        p.SMFIR_ADDRCPT,
        p.SMFIR_DELRCPT,
        p.SMFIR_ADDRCPT_PAR,
        p.SMFIR_SHUTDOWN,
        p.SMFIR_ACCEPT,
        p.SMFIR_REPLBODY,
        p.SMFIR_CONTINUE,
        p.SMFIR_DISCARD,
        p.SMFIR_CHGFROM,
        p.SMFIR_CONN_FAIL,
        p.SMFIR_ADDHEADER,
        p.SMFIR_INSHEADER,
        p.SMFIR_SETSYMLIST,
        p.SMFIR_CHGHEADER,
        p.SMFIR_PROGRESS,
        p.SMFIR_QUARANTINE,
        p.SMFIR_REJECT,
        p.SMFIR_SKIP,
        p.SMFIR_TEMPFAIL,
        p.SMFIR_REPLYCODE,
    }
)


class _Framer:
    """Cuts a byte stream into (code, data) packets; checks each header early."""

    def __init__(self, codes: frozenset[bytes], max_packet: int) -> None:
        if max_packet < 1:
            raise ValueError(f"max_packet must be positive, not {max_packet}")
        self._codes = codes
        self._max_packet = max_packet
        self._buffer = bytearray()
        self._error: str | None = None

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        if self._error is not None:
            raise ProtocolError(self._error)
        self._buffer += data
        try:
            return self._drain()
        except ProtocolError as exc:
            self.break_stream(exc)
            raise

    def break_stream(self, error: ProtocolError) -> None:
        """Refuse all later input: the stream cannot be resynchronised."""
        self._error = f"stream already broken: {error}"
        self._buffer.clear()

    def _drain(self) -> list[tuple[bytes, bytes]]:
        """Every complete packet in the buffer, cut in one pass."""
        buffer = self._buffer
        size = len(buffer)
        packets: list[tuple[bytes, bytes]] = []
        offset = 0
        with memoryview(buffer) as view:  # payloads copied once, not twice
            while (end := self._packet_end(offset, size)) is not None:
                code = _CODE_BYTES[buffer[offset + p.MILTER_LEN_BYTES]]
                start = offset + p.MILTER_LEN_BYTES + 1
                packets.append((code, bytes(view[start:end])))
                offset = end
        del buffer[:offset]
        return packets

    def _packet_end(self, offset: int, size: int) -> int | None:
        """Where the packet at ``offset`` ends, or None if it is not all here."""
        header_end = offset + p.MILTER_LEN_BYTES
        if size < header_end:
            return None
        (length,) = _UINT32.unpack_from(self._buffer, offset)
        if length == 0:
            raise ProtocolError("packet length 0")
        if length > self._max_packet:
            raise ProtocolError(f"packet length {length} over {self._max_packet}")
        if size <= header_end:
            return None
        code = _CODE_BYTES[self._buffer[header_end]]
        if code not in self._codes:
            raise ProtocolError(f"unknown packet code {code!r}")
        end = header_end + length
        return end if size >= end else None


_CODE_BYTES = tuple(bytes((value,)) for value in range(256))
"""Each byte value as a one-byte ``bytes`` (packet codes), made once."""


def _packet(code: bytes, data: bytes = b"") -> bytes:
    return _UINT32.pack(len(data) + 1) + code + data


# -- String helpers -----------------------------------------------------------


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _cstrings(*texts: str) -> bytes:
    return b"".join(_raw(text) + b"\0" for text in texts)


def _split_cstrings(data: bytes, what: str) -> list[str]:
    if not data.endswith(b"\0"):
        raise ProtocolError(f"{what}: strings not NUL-terminated")
    return [_text(raw) for raw in data[:-1].split(b"\0")]


def _exact_strings(data: bytes, count: int, what: str) -> list[str]:
    strings = _split_cstrings(data, what)
    if len(strings) != count:
        raise ProtocolError(f"{what}: {len(strings)} strings, expected {count}")
    return strings


def _uint32_at(data: bytes, offset: int, what: str) -> int:
    if len(data) < offset + _UINT32.size:
        raise ProtocolError(f"{what}: truncated")
    value: int = _UINT32.unpack_from(data, offset)[0]
    return value


# -- Command parsing (filter side) --------------------------------------------


def _parse_optneg(data: bytes) -> OptNeg:
    if len(data) < _OPTNEG.size:
        raise ProtocolError(f"OPTNEG: {len(data)} bytes, expected 12")
    version, actions, protocol = _OPTNEG.unpack_from(data)
    return OptNeg(version, actions, protocol)


def _parse_macro(data: bytes) -> Macro:
    if not data:
        raise ProtocolError("MACRO: empty")
    command = data[:1]
    rest = data[1:]
    strings = _split_cstrings(rest, "MACRO") if rest else []
    if len(strings) % 2:
        raise ProtocolError("MACRO: a name without a value")
    pairs = zip(strings[::2], strings[1::2], strict=True)
    return Macro(command, dict(pairs))


_FAMILIES = frozenset({p.SMFIA_UNKNOWN, p.SMFIA_UNIX, p.SMFIA_INET, p.SMFIA_INET6})


def _parse_connect(data: bytes) -> Connect:
    end = data.find(b"\0")
    if end < 0 or len(data) < end + 2:
        raise ProtocolError("CONNECT: truncated")
    hostname = _text(data[:end])
    family = chr(data[end + 1])
    if family not in _FAMILIES:
        raise ProtocolError(f"CONNECT: unknown address family {family!r}")
    if family == p.SMFIA_UNKNOWN:
        return Connect(hostname, family)
    if len(data) < end + 4:
        raise ProtocolError("CONNECT: no port")
    (port,) = _UINT16.unpack_from(data, end + 2)
    (address,) = _exact_strings(data[end + 4 :], 1, "CONNECT")
    return Connect(hostname, family, port, address)


def _parse_args(data: bytes, what: str) -> tuple[str, ...]:
    args = tuple(_split_cstrings(data, what))
    if not args[0]:
        raise ProtocolError(f"{what}: empty address")
    return args


def _parse_header(data: bytes) -> Header:
    # The commonest packet by far: checked and split without helpers.
    fields = data[:-1].split(b"\0") if data.endswith(b"\0") else []
    if len(fields) != 2:
        _exact_strings(data, 2, "HEADER")  # raises the precise error
    name, value = fields
    return Header(_text(name), _text(value))


def _parse_empty(kind: Callable[[], Command]) -> Callable[[bytes], Command]:
    def parse(data: bytes) -> Command:
        if data:
            raise ProtocolError(f"{kind.__name__}: unexpected data")
        return kind()

    return parse


_COMMAND_PARSERS: dict[bytes, Callable[[bytes], Command]] = {
    p.SMFIC_OPTNEG: _parse_optneg,
    p.SMFIC_MACRO: _parse_macro,
    p.SMFIC_CONNECT: _parse_connect,
    p.SMFIC_HELO: lambda data: Helo(*_exact_strings(data, 1, "HELO")),
    p.SMFIC_MAIL: lambda data: Mail(_parse_args(data, "MAIL")),
    p.SMFIC_RCPT: lambda data: Rcpt(_parse_args(data, "RCPT")),
    p.SMFIC_HEADER: _parse_header,
    p.SMFIC_EOH: _parse_empty(EndOfHeaders),
    p.SMFIC_BODY: Body,
    p.SMFIC_BODYEOB: EndOfMessage,
    p.SMFIC_ABORT: _parse_empty(Abort),
    p.SMFIC_QUIT: _parse_empty(Quit),
    p.SMFIC_QUIT_NC: _parse_empty(QuitNoClose),
    p.SMFIC_DATA: _parse_empty(Data),
    p.SMFIC_UNKNOWN: lambda data: Unknown(*_exact_strings(data, 1, "UNKNOWN")),
}


_COMMAND_CODES = frozenset(_COMMAND_PARSERS)


class Decoder:
    """Filter side: turns bytes from the MTA into commands.

    Feed it whatever the socket returned; partial packets are kept until the
    rest arrives. Raises :class:`ProtocolError` on a zero or oversized length
    (checked from the 4-byte header, before buffering), an unknown command or
    a malformed payload; the decoder stays broken afterwards.
    """

    def __init__(self, max_packet: int = p.DEFAULT_MAX_PACKET) -> None:
        self._framer = _Framer(_COMMAND_CODES, max_packet)

    def feed(self, data: bytes) -> list[Command]:
        """Return the commands completed by ``data``, in order."""
        packets = self._framer.feed(data)
        try:
            return [_COMMAND_PARSERS[code](raw) for code, raw in packets]
        except ProtocolError as exc:
            self._framer.break_stream(exc)
            raise


# -- Command encoding (MTA side, for tests and benchmarks) --------------------


def _encode_connect(command: Connect) -> bytes:
    head = _cstrings(command.hostname) + command.family.encode("ascii")
    if command.family == p.SMFIA_UNKNOWN:
        return _packet(p.SMFIC_CONNECT, head)
    body = _UINT16.pack(command.port) + _cstrings(command.address)
    return _packet(p.SMFIC_CONNECT, head + body)


def _encode_macro(command: Macro) -> bytes:
    pairs = (text for pair in command.macros.items() for text in pair)
    return _packet(p.SMFIC_MACRO, command.command + _cstrings(*pairs))


def encode_command(command: Command) -> bytes:
    """Encode one MTA-to-filter command as a packet."""
    match command:
        case OptNeg(version, actions, protocol):
            return _packet(p.SMFIC_OPTNEG, _OPTNEG.pack(version, actions, protocol))
        case Macro():
            return _encode_macro(command)
        case Connect():
            return _encode_connect(command)
        case Helo(name):
            return _packet(p.SMFIC_HELO, _cstrings(name))
        case Mail(args):
            return _packet(p.SMFIC_MAIL, _cstrings(*args))
        case Rcpt(args):
            return _packet(p.SMFIC_RCPT, _cstrings(*args))
        case Header(name, value):
            return _packet(p.SMFIC_HEADER, _cstrings(name, value))
        case Body(chunk):
            return _packet(p.SMFIC_BODY, chunk)
        case EndOfMessage(chunk):
            return _packet(p.SMFIC_BODYEOB, chunk)
        case Unknown(text):
            return _packet(p.SMFIC_UNKNOWN, _cstrings(text))
    return _packet(_EMPTY_COMMAND_CODES[type(command)])


_EMPTY_COMMAND_CODES: dict[type[Command], bytes] = {
    EndOfHeaders: p.SMFIC_EOH,
    Abort: p.SMFIC_ABORT,
    Quit: p.SMFIC_QUIT,
    QuitNoClose: p.SMFIC_QUIT_NC,
    Data: p.SMFIC_DATA,
}


# -- Reply encoding (filter side) ---------------------------------------------


def encode_continue() -> bytes:
    """SMFIR_CONTINUE."""
    return _packet(p.SMFIR_CONTINUE)


def encode_accept() -> bytes:
    """SMFIR_ACCEPT."""
    return _packet(p.SMFIR_ACCEPT)


def encode_reject() -> bytes:
    """SMFIR_REJECT."""
    return _packet(p.SMFIR_REJECT)


def encode_discard() -> bytes:
    """SMFIR_DISCARD."""
    return _packet(p.SMFIR_DISCARD)


def encode_tempfail() -> bytes:
    """SMFIR_TEMPFAIL."""
    return _packet(p.SMFIR_TEMPFAIL)


def encode_progress() -> bytes:
    """SMFIR_PROGRESS."""
    return _packet(p.SMFIR_PROGRESS)


def encode_skip() -> bytes:
    """SMFIR_SKIP."""
    return _packet(p.SMFIR_SKIP)


def _check_reply(code: int, xcode: str, text: str) -> None:
    if not 400 <= code <= 599:
        raise ValueError(f"reply code {code} is not 4xx or 5xx")
    if xcode and not _XCODE.fullmatch(xcode):
        raise ValueError(f"enhanced status code {xcode!r} is not N.N.N")
    if xcode and xcode[0] != str(code)[0]:
        raise ValueError(f"enhanced status code {xcode} does not match {code}")
    if any(char in text for char in "\r\n\0"):
        raise ValueError("reply text must be one line without NUL")


def encode_replycode(code: int, xcode: str = "", text: str = "") -> bytes:
    """SMFIR_REPLYCODE, e.g. ``550 5.7.1 text``.

    A ``%`` in the text is doubled: libmilter's smfi_setreply documents that
    the MTA treats the text like a printf format.
    """
    _check_reply(code, xcode, text)
    parts = (str(code), xcode, text.replace("%", "%%"))
    line = " ".join(part for part in parts if part)
    return _packet(p.SMFIR_REPLYCODE, _cstrings(line))


def _check_header(name: str, value: str) -> None:
    if not _HEADER_NAME.fullmatch(name):
        raise ValueError(f"bad header name {name!r}")
    if "\0" in value:
        raise ValueError(f"header {name} value contains NUL")


def _check_index(index: int) -> None:
    if not 0 <= index <= _UINT32_MAX:
        raise ValueError(f"header index {index} out of range")


def encode_add_header(name: str, value: str) -> bytes:
    """SMFIR_ADDHEADER: append ``name: value``."""
    _check_header(name, value)
    return _packet(p.SMFIR_ADDHEADER, _cstrings(name, value))


def encode_insert_header(index: int, name: str, value: str) -> bytes:
    """SMFIR_INSHEADER: insert at ``index`` (0 = before the first field)."""
    _check_index(index)
    _check_header(name, value)
    return _packet(p.SMFIR_INSHEADER, _UINT32.pack(index) + _cstrings(name, value))


def encode_change_header(index: int, name: str, value: str) -> bytes:
    """SMFIR_CHGHEADER: change the index-th ``name`` field; empty value deletes."""
    _check_index(index)
    _check_header(name, value)
    return _packet(p.SMFIR_CHGHEADER, _UINT32.pack(index) + _cstrings(name, value))


def encode_replace_body(body: bytes) -> bytes:
    """SMFIR_REPLBODY packets of at most MILTER_CHUNK_SIZE bytes each."""
    size = p.MILTER_CHUNK_SIZE
    chunks = [body[start : start + size] for start in range(0, len(body), size)]
    return b"".join(_packet(p.SMFIR_REPLBODY, chunk) for chunk in chunks or [b""])


def encode_quarantine(reason: str) -> bytes:
    """SMFIR_QUARANTINE with a non-empty reason (a modification, not final)."""
    if not reason or "\0" in reason:
        raise ValueError("quarantine reason must be non-empty without NUL")
    return _packet(p.SMFIR_QUARANTINE, _cstrings(reason))


def _check_address(address: str) -> None:
    if not address or any(char in address for char in "\r\n\0"):
        raise ValueError(f"bad recipient address {address!r}")


def encode_add_recipient(address: str) -> bytes:
    """SMFIR_ADDRCPT: add an envelope recipient."""
    _check_address(address)
    return _packet(p.SMFIR_ADDRCPT, _cstrings(address))


def encode_delete_recipient(address: str) -> bytes:
    """SMFIR_DELRCPT: remove an envelope recipient."""
    _check_address(address)
    return _packet(p.SMFIR_DELRCPT, _cstrings(address))


def encode_optneg_reply(
    version: int,
    actions: int,
    protocol: int,
    macros: Mapping[int, Iterable[str]] | None = None,
) -> bytes:
    """The filter's SMFIC_OPTNEG answer, with an optional v6 macro request.

    ``macros`` maps an SMFIM_* stage to macro names. A non-empty request sets
    SMFIF_SETSYMLIST in ``actions``, which the MTA must have offered.
    """
    request = b""
    for stage, names in (macros or {}).items():
        listed = " ".join(names)
        if listed:
            request += _UINT32.pack(stage) + _cstrings(listed)
    if request:
        actions |= p.SMFIF_SETSYMLIST
    return _packet(p.SMFIC_OPTNEG, _OPTNEG.pack(version, actions, protocol) + request)


def encode_reply(reply: Reply) -> bytes:
    """Encode any reply; raises ValueError for an invalid one."""
    match reply:
        case AddHeader(name, value):
            return encode_add_header(name, value)
        case InsertHeader(index, name, value):
            return encode_insert_header(index, name, value)
        case ChangeHeader(index, name, value):
            return encode_change_header(index, name, value)
        case ReplaceBody(body):
            return encode_replace_body(body)
        case Quarantine(reason):
            return encode_quarantine(reason)
        case AddRecipient(address):
            return encode_add_recipient(address)
        case DeleteRecipient(address):
            return encode_delete_recipient(address)
        case ReplyCode(code, xcode, text):
            return encode_replycode(code, xcode, text)
        case OptNegReply(version, actions, protocol, macros):
            named = {stage: names.split() for stage, names in macros.items()}
            return encode_optneg_reply(version, actions, protocol, named)
        case OtherReply(code, data):
            return _packet(code, data)
    return _packet(_EMPTY_REPLY_CODES[type(reply)])


_EMPTY_REPLY_CODES: dict[type[Reply], bytes] = {
    Continue: p.SMFIR_CONTINUE,
    Accept: p.SMFIR_ACCEPT,
    Reject: p.SMFIR_REJECT,
    Discard: p.SMFIR_DISCARD,
    TempFail: p.SMFIR_TEMPFAIL,
    Progress: p.SMFIR_PROGRESS,
    Skip: p.SMFIR_SKIP,
}


# -- Reply parsing (MTA side, for tests and benchmarks) -----------------------


def _parse_optneg_reply(data: bytes) -> OptNegReply:
    if len(data) < _OPTNEG.size:
        raise ProtocolError(f"OPTNEG reply: {len(data)} bytes, expected 12 or more")
    version, actions, protocol = _OPTNEG.unpack_from(data)
    macros: dict[int, str] = {}
    offset = _OPTNEG.size
    while offset < len(data):
        stage = _uint32_at(data, offset, "OPTNEG macro request")
        end = data.find(b"\0", offset + _UINT32.size)
        if end < 0:
            raise ProtocolError("OPTNEG macro request: not NUL-terminated")
        macros[stage] = _text(data[offset + _UINT32.size : end])
        offset = end + 1
    return OptNegReply(version, actions, protocol, macros)


def _parse_replycode(data: bytes) -> ReplyCode:
    (line,) = _exact_strings(data, 1, "REPLYCODE")
    code, _, rest = line.partition(" ")
    if not (code.isdigit() and len(code) == 3):
        raise ProtocolError(f"REPLYCODE: bad code in {line!r}")
    xcode, _, text = rest.partition(" ")
    if not _XCODE.fullmatch(xcode):
        xcode, text = "", rest
    return ReplyCode(int(code), xcode, text.replace("%%", "%"))


def _parse_indexed_header(data: bytes, what: str) -> tuple[int, str, str]:
    index = _uint32_at(data, 0, what)
    name, value = _exact_strings(data[_UINT32.size :], 2, what)
    return index, name, value


_REPLY_PARSERS: dict[bytes, Callable[[bytes], Reply]] = {
    p.SMFIC_OPTNEG: _parse_optneg_reply,
    p.SMFIR_REPLYCODE: _parse_replycode,
    p.SMFIR_ADDHEADER: lambda data: AddHeader(*_exact_strings(data, 2, "ADDHEADER")),
    p.SMFIR_INSHEADER: lambda data: InsertHeader(
        *_parse_indexed_header(data, "INSHEADER")
    ),
    p.SMFIR_CHGHEADER: lambda data: ChangeHeader(
        *_parse_indexed_header(data, "CHGHEADER")
    ),
    p.SMFIR_REPLBODY: ReplaceBody,
    p.SMFIR_QUARANTINE: lambda data: Quarantine(*_exact_strings(data, 1, "QUARANTINE")),
    p.SMFIR_ADDRCPT: lambda data: AddRecipient(*_exact_strings(data, 1, "ADDRCPT")),
    p.SMFIR_DELRCPT: lambda data: DeleteRecipient(*_exact_strings(data, 1, "DELRCPT")),
}

_EMPTY_REPLIES: dict[bytes, Callable[[], Reply]] = {
    code: kind for kind, code in _EMPTY_REPLY_CODES.items()
}


def _parse_reply(code: bytes, data: bytes) -> Reply:
    parser = _REPLY_PARSERS.get(code)
    if parser is not None:
        return parser(data)
    kind = _EMPTY_REPLIES.get(code)
    if kind is None:
        return OtherReply(code, data)
    if data:
        raise ProtocolError(f"reply {code!r}: unexpected data")
    return kind()


class ReplyDecoder:
    """MTA side: turns bytes from a filter into replies (tests, benchmarks)."""

    def __init__(self, max_packet: int = p.DEFAULT_MAX_PACKET) -> None:
        self._framer = _Framer(_REPLY_CODES, max_packet)

    def feed(self, data: bytes) -> list[Reply]:
        """Return the replies completed by ``data``, in order."""
        packets = self._framer.feed(data)
        try:
            return [_parse_reply(code, raw) for code, raw in packets]
        except ProtocolError as exc:
            self._framer.break_stream(exc)
            raise
