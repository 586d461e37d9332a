"""One milter connection: negotiation, envelope collection, end-of-message replies.

A :class:`Session` does no I/O. It consumes decoded commands and returns the
reply packets to send (often none: every step before end of message is
negotiated as "no reply" when the MTA allows it).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from . import protocol as p
from .actions import (
    REQUIRED_ACTION_FLAG,
    Action,
    AddHeader,
    ChangeHeader,
    Continue,
    FinalAction,
    InsertHeader,
    Modification,
)
from .codec import (
    Abort,
    Body,
    Command,
    Connect,
    Data,
    EndOfHeaders,
    EndOfMessage,
    Header,
    Helo,
    Macro,
    Mail,
    OptNeg,
    ProtocolError,
    Quit,
    QuitNoClose,
    Rcpt,
    Unknown,
    encode_continue,
    encode_optneg_reply,
    encode_reply,
)
from .envelope import Envelope, macro_name, strip_brackets
from .handler import Handler
from .options import NO_REPLY_FLAG, SKIP_FLAG, MilterOptions, Step

log = logging.getLogger(__name__)

_CONNECTION_MACRO_STAGES = frozenset({p.SMFIC_CONNECT, p.SMFIC_HELO})
_ALLOWED_BEFORE_OPTNEG = (OptNeg, Abort, Quit, QuitNoClose)
_NEED_HANDLER = (EndOfMessage, Quit, QuitNoClose)
"""Commands that always call a handler hook (end of message, close)."""
_session_ids = itertools.count(1)

_StepCommand = (
    Connect | Helo | Mail | Rcpt | Data | Header | EndOfHeaders | Body | Unknown
)
"""Commands that report one SMTP step and get at most a CONTINUE."""


@dataclass(frozen=True)
class Negotiation:
    """The agreed protocol: what the MTA offered, intersected with our wishes."""

    version: int
    actions: int
    protocol: int
    macros: Mapping[int, tuple[str, ...]]

    def encode(self) -> bytes:
        """The SMFIC_OPTNEG reply packet for this agreement."""
        actions = self.actions & ~p.SMFIF_SETSYMLIST
        return encode_optneg_reply(self.version, actions, self.protocol, self.macros)


def wanted_protocol(options: MilterOptions) -> int:
    """SMFIP_* flags the filter would like: skip unused steps, no early replies."""
    flags = 0
    for step in Step:
        flags |= NO_REPLY_FLAG[step]
        if step not in options.steps:
            flags |= SKIP_FLAG[step]
    if options.header_leading_space:
        flags |= p.SMFIP_HDR_LEADSPC
    return flags


def negotiate(offer: OptNeg, options: MilterOptions) -> Negotiation:
    """Agree on version, actions, steps and macros with an MTA's offer."""
    if offer.version < p.SMFI_PROT_VERSION_MIN:
        raise ProtocolError(f"MTA protocol version {offer.version} is too old")
    version = min(offer.version, p.SMFI_PROT_VERSION)
    actions = options.actions & offer.actions & ~p.SMFIF_SETSYMLIST
    can_request = version >= 6 and offer.actions & p.SMFIF_SETSYMLIST
    macros = options.macros if can_request else {}
    if macros:
        actions |= p.SMFIF_SETSYMLIST
    missing = options.actions & ~offer.actions
    if missing:
        log.warning("MTA does not offer milter actions 0x%x", missing)
    protocol = wanted_protocol(options) & offer.protocol
    return Negotiation(version, actions, protocol, macros)


class Session:
    """The state of one MTA connection; call :meth:`handle` per command."""

    def __init__(
        self,
        handler: Handler,
        options: MilterOptions | None = None,
        *,
        peer: str = "",
    ) -> None:
        self.id = next(_session_ids)
        self.peer = peer
        self.options = options or MilterOptions()
        self.negotiation: Negotiation | None = None
        self.client: Connect | None = None
        self.helo: str | None = None
        self.envelope: Envelope | None = None
        self.messages = 0
        self.closed = False
        self.state: dict[str, object] = {}
        self._handler = handler
        self._macros: dict[bytes, dict[str, str]] = {}
        # Body chunks as they came, joined once at end of message.
        self._body: list[bytes] = []
        self._body_kept = 0
        self._handler_closed = False

    # -- Views -----------------------------------------------------------------

    @property
    def in_message(self) -> bool:
        """True between the first command of a message and its end or abort."""
        return self.envelope is not None

    @property
    def actions(self) -> int:
        """The negotiated SMFIF_* action flags (0 before negotiation)."""
        return self.negotiation.actions if self.negotiation else 0

    @property
    def macros(self) -> dict[str, str]:
        """All macros the MTA sent for the connection and the current message."""
        return {
            name: value
            for stage in self._macros.values()
            for name, value in stage.items()
        }

    def macro(self, name: str) -> str | None:
        """One macro by name, with or without braces."""
        return self.macros.get(macro_name(name))

    # -- Commands --------------------------------------------------------------

    async def handle(self, command: Command) -> bytes:
        """Apply one command; return the reply packets to send (maybe none).

        Raises :class:`ProtocolError` when the MTA breaks the protocol.
        """
        reply = self.handle_now(command)
        if reply is not None:
            return reply
        if isinstance(command, EndOfMessage):
            return await self._end_of_message(command.chunk)
        if isinstance(command, Abort):
            await self._abort()
        elif isinstance(command, Quit | QuitNoClose):
            await self._quit(command)
        return b""

    def handle_now(self, command: Command) -> bytes | None:
        """Apply a command that calls no handler hook; None if it does.

        Every step before end of message is such a command, and so is an
        ABORT between messages: a server applies them without awaiting
        anything. END OF MESSAGE, QUIT and an ABORT inside a message return
        None and need :meth:`handle`. Raises :class:`ProtocolError` as
        :meth:`handle` does.
        """
        if self.negotiation is None and not isinstance(command, _ALLOWED_BEFORE_OPTNEG):
            raise ProtocolError(f"{type(command).__name__} before OPTNEG")
        if isinstance(command, _NEED_HANDLER):
            return None
        if isinstance(command, Abort):
            if self.envelope is not None:
                return None
            self._finish_message()
            return b""
        if isinstance(command, Macro):
            self._store_macros(command)
            return b""
        if isinstance(command, OptNeg):
            return self._negotiate(command)
        return self._acknowledge(self._collect(command))

    def _negotiate(self, offer: OptNeg) -> bytes:
        self.negotiation = negotiate(offer, self.options)
        log.debug(
            "session %s negotiated version %s actions 0x%x protocol 0x%x",
            self.id,
            self.negotiation.version,
            self.negotiation.actions,
            self.negotiation.protocol,
        )
        return self.negotiation.encode()

    def _store_macros(self, command: Macro) -> None:
        values = {macro_name(name): value for name, value in command.macros.items()}
        self._macros[command.command] = values

    def _collect(self, command: _StepCommand) -> Step:
        match command:
            case Connect():
                self.client = command
                return Step.CONNECT
            case Helo(name):
                self.helo = name
                return Step.HELO
            case Mail(args):
                self._start_message(args)
                return Step.MAIL
            case Rcpt(args):
                self._message().rcpt_to.append(strip_brackets(args[0]))
                self._message().rcpt_args.append(list(args[1:]))
                return Step.RCPT
            case Header(name, value):
                self._message().headers.append((name, value))
                return Step.HEADERS
            case Body(chunk):
                self._add_body(chunk)
                return Step.BODY
        return _OTHER_STEPS[type(command)]

    def _acknowledge(self, step: Step) -> bytes:
        assert self.negotiation is not None  # checked in handle()
        if self.negotiation.protocol & NO_REPLY_FLAG[step]:
            return b""
        return encode_continue()

    # -- Message life ----------------------------------------------------------

    def _message(self) -> Envelope:
        if self.envelope is None:
            self.envelope = self._new_envelope()
        return self.envelope

    def _new_envelope(self) -> Envelope:
        client = self.client or Connect("", p.SMFIA_UNKNOWN)
        return Envelope(
            client_name=client.hostname,
            client_address=client.address,
            client_port=client.port,
            client_family=client.family,
            helo=self.helo or "",
        )

    def _start_message(self, args: tuple[str, ...]) -> None:
        envelope = self._new_envelope()
        envelope.mail_from = strip_brackets(args[0])
        envelope.mail_args = list(args[1:])
        self.envelope = envelope
        self._clear_body()

    def _clear_body(self) -> None:
        self._body.clear()
        self._body_kept = 0

    def _add_body(self, chunk: bytes) -> None:
        envelope = self._message()
        envelope.body_size += len(chunk)
        room = self.options.max_body_bytes - self._body_kept
        kept = chunk[: max(room, 0)]  # the chunk itself when it all fits
        if kept:
            self._body.append(kept)
            self._body_kept += len(kept)
        if len(chunk) > room:
            envelope.body_truncated = True

    def _snapshot(self) -> Envelope:
        envelope = self._message()
        envelope.body = b"".join(self._body)
        self._body[:] = [envelope.body]  # the chunks are not kept twice
        envelope.macros = self.macros
        return envelope

    def _finish_message(self) -> None:
        self.envelope = None
        self._clear_body()
        for stage in list(self._macros):
            if stage not in _CONNECTION_MACRO_STAGES:
                del self._macros[stage]

    async def _end_of_message(self, chunk: bytes) -> bytes:
        if chunk:
            self._add_body(chunk)
        envelope = self._snapshot()
        try:
            reply = await self._ask_handler(envelope)
        finally:
            self._finish_message()
        self.messages += 1
        return reply

    async def _ask_handler(self, envelope: Envelope) -> bytes:
        try:
            actions = await self._handler.end_of_message(self, envelope)
            return self.encode_actions(actions)
        except Exception:
            fallback = self.options.fallback
            log.exception(
                "milter handler failed, queue id %s, message-id %s; answering %s",
                envelope.queue_id,
                envelope.message_id,
                type(fallback).__name__,
            )
            return encode_reply(fallback)

    async def _abort(self) -> None:
        envelope = self.envelope
        if envelope is not None:
            try:
                await self._handler.abort(self, self._snapshot())
            except Exception:
                log.exception(
                    "milter abort hook failed, queue id %s", envelope.queue_id
                )
        self._finish_message()

    async def _quit(self, command: Quit | QuitNoClose) -> None:
        await self.close()
        if isinstance(command, Quit):
            self.closed = True
            return
        self.client = None
        self.helo = None
        self._macros.clear()
        self._handler_closed = False

    async def close(self) -> None:
        """End the session: abort an open message, tell the handler once."""
        await self._abort()
        if self._handler_closed:
            return
        self._handler_closed = True
        try:
            await self._handler.close(self)
        except Exception:
            log.exception("milter close hook failed, session %s", self.id)

    # -- Replies ---------------------------------------------------------------

    def encode_actions(self, actions: Sequence[Action]) -> bytes:
        """Encode modifications, then exactly one final reply (Continue if none).

        Raises ValueError for two final replies, a modification that was not
        negotiated or an invalid value; nothing is sent then.
        """
        finals: list[FinalAction] = []
        changes: list[Modification] = []
        for action in actions:
            if isinstance(action, FinalAction):
                finals.append(action)
            else:
                changes.append(action)
        if len(finals) > 1:
            raise ValueError(f"more than one final reply: {finals}")
        packets = [encode_reply(self._outgoing(change)) for change in changes]
        packets.append(encode_reply(finals[0] if finals else Continue()))
        return b"".join(packets)

    def _outgoing(self, change: Modification) -> Modification:
        needed = REQUIRED_ACTION_FLAG[type(change)]
        if not self.actions & needed:
            raise ValueError(f"{type(change).__name__} needs action 0x{needed:x}")
        if not isinstance(change, AddHeader | InsertHeader | ChangeHeader):
            return change
        if not self._leading_space or not change.value or change.value[0] in " \t":
            return change
        return dataclasses.replace(change, value=" " + change.value)

    @property
    def _leading_space(self) -> bool:
        protocol = self.negotiation.protocol if self.negotiation else 0
        return bool(protocol & p.SMFIP_HDR_LEADSPC)


_OTHER_STEPS: dict[type[Command], Step] = {
    Data: Step.DATA,
    EndOfHeaders: Step.EOH,
    Unknown: Step.UNKNOWN,
}
