"""Session tests: a fake handler driven through whole v6 dialogues."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest
from milter_mta import (
    ADD_AND_HOLD,
    POSTFIX_OFFER,
    QUEUE_ID,
    RecordingHandler,
    connection_commands,
    message_commands,
    run,
)
from phishgate.milter import protocol as p
from phishgate.milter.actions import (
    Action,
    AddHeader,
    ChangeHeader,
    Continue,
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
    EndOfMessage,
    Header,
    Helo,
    Mail,
    OptNeg,
    OptNegReply,
    ProtocolError,
    Quit,
    QuitNoClose,
    Rcpt,
    Reply,
    ReplyDecoder,
)
from phishgate.milter.options import DEFAULT_MACROS, MilterOptions, Step
from phishgate.milter.session import Session


async def _drive(session: Session, commands: Sequence[Command]) -> list[list[Reply]]:
    """Feed commands one by one; return the decoded replies to each."""
    return [ReplyDecoder().feed(await session.handle(c)) for c in commands]


def _dialogue(
    commands: Sequence[Command],
    handler: RecordingHandler,
    options: MilterOptions | None = None,
) -> tuple[Session, list[list[Reply]]]:
    session = Session(handler, options, peer="test")

    async def scenario() -> list[list[Reply]]:
        return await _drive(session, commands)

    return session, run(scenario)


def test_full_postfix_dialogue() -> None:
    """OPTNEG with macro request, two messages, ABORTs and QUIT, replies in order."""
    handler = RecordingHandler(ADD_AND_HOLD)
    commands = [*connection_commands(), *message_commands()]
    commands += [*message_commands("Second"), Quit()]
    session, replies = _dialogue(commands, handler)

    optneg = replies[0][0]
    assert isinstance(optneg, OptNegReply)
    assert optneg.version == 6
    assert optneg.actions == (
        p.SMFIF_ADDHDRS | p.SMFIF_CHGHDRS | p.SMFIF_QUARANTINE | p.SMFIF_SETSYMLIST
    )
    assert optneg.macros == {s: " ".join(n) for s, n in DEFAULT_MACROS.items()}

    eom_replies = [r for r in replies[1:] if r]
    assert eom_replies == [ADD_AND_HOLD, ADD_AND_HOLD]
    assert len(handler.envelopes) == 2
    assert handler.aborted == []
    assert session.closed
    assert handler.closed == [session]
    assert session.messages == 2


def test_negotiated_protocol_skips_and_silences_steps() -> None:
    """Unused steps are skipped, and no step before EOM waits for a reply."""
    handler = RecordingHandler()
    _session, replies = _dialogue([POSTFIX_OFFER], handler)
    optneg = replies[0][0]
    assert isinstance(optneg, OptNegReply)

    skipped = p.SMFIP_NODATA | p.SMFIP_NOEOH | p.SMFIP_NOUNKNOWN
    no_reply = p.SMFIP_NR_CONN | p.SMFIP_NR_HELO | p.SMFIP_NR_MAIL | p.SMFIP_NR_RCPT
    no_reply |= p.SMFIP_NR_HDR | p.SMFIP_NR_BODY | p.SMFIP_NR_EOH | p.SMFIP_NR_DATA
    assert optneg.protocol & skipped == skipped
    assert optneg.protocol & no_reply == no_reply
    needed = p.SMFIP_NOCONNECT | p.SMFIP_NOHELO | p.SMFIP_NOMAIL | p.SMFIP_NORCPT
    needed |= p.SMFIP_NOHDRS | p.SMFIP_NOBODY | p.SMFIP_HDR_LEADSPC
    assert optneg.protocol & needed == 0


def test_envelope_contents() -> None:
    """The envelope carries client, HELO, sender, recipients, macros, headers, body."""
    handler = RecordingHandler()
    _dialogue([*connection_commands(), *message_commands()], handler)
    (envelope,) = handler.envelopes

    assert (envelope.client_name, envelope.client_address) == (
        "client.example.test",
        "192.0.2.1",
    )
    assert (envelope.client_port, envelope.client_family) == (41234, p.SMFIA_INET)
    assert envelope.helo == "client.example.test"
    assert envelope.mail_from == "alice@example.test"
    assert envelope.mail_args == ["SIZE=1234", "BODY=8BITMIME"]
    assert envelope.rcpt_to == ["bob@example.test", "carol@example.test"]
    assert envelope.rcpt_args == [[], ["NOTIFY=NEVER"]]
    assert envelope.queue_id == QUEUE_ID
    assert envelope.auth_authen == "alice"
    assert envelope.macros["j"] == "mx.example.test"
    assert envelope.message_id == "<m1@example.test>"
    assert envelope.header_values("subject") == ["Hello"]
    assert envelope.body == b"hello\r\nsecond chunk\r\n"
    assert envelope.body_size == len(envelope.body)
    assert not envelope.body_truncated


def test_second_message_starts_clean() -> None:
    """Message macros, headers and body do not leak into the next message."""
    handler = RecordingHandler()
    second: list[Command] = [
        Mail(("<>",)),
        Rcpt(("<x@y.test>",)),
        EndOfMessage(b"t\r\n"),
    ]
    commands = [*connection_commands(), *message_commands(), *second]
    session, _ = _dialogue(commands, handler)
    first, after = handler.envelopes

    assert after.mail_from == ""
    assert after.headers == []
    assert after.body == b"t\r\n"
    assert after.queue_id is None
    assert after.macros["j"] == "mx.example.test"
    assert first.queue_id == QUEUE_ID
    assert session.macro("{daemon_name}") == "smtpd"


def test_abort_mid_message_calls_hook_and_resets() -> None:
    """ABORT during a message reports it to the handler and forgets it."""
    handler = RecordingHandler()
    commands = [*connection_commands(), Mail(("<a@b.test>",)), Abort()]
    session, _ = _dialogue(commands, handler)
    assert [e.mail_from for e in handler.aborted] == ["a@b.test"]
    assert not session.in_message


def test_abort_after_end_of_message_is_quiet() -> None:
    """Postfix's ABORT after every message does not call the abort hook."""
    handler = RecordingHandler()
    _dialogue([*connection_commands(), *message_commands()], handler)
    assert handler.aborted == []


def test_mta_without_no_reply_flags_gets_continue_per_step() -> None:
    """An old MTA without NR flags or SETSYMLIST gets CONTINUE and no macro request."""
    handler = RecordingHandler()
    commands: list[Command] = [
        OptNeg(2, 0x3F, 0x7F),
        Helo("x"),
        Mail(("<a@b>",)),
        Header("A", "b"),
        EndOfMessage(),
    ]
    _, replies = _dialogue(commands, handler)
    assert replies[0] == [OptNegReply(2, 0x31, p.SMFIP_NOEOH)]
    assert replies[1:] == [[Continue()]] * 4


def test_body_limit_truncates_and_records() -> None:
    """Past max_body_bytes the body is dropped and flagged, the size still counted."""
    handler = RecordingHandler()
    options = MilterOptions(max_body_bytes=10)
    chunks: list[Command] = [Body(b"12345678"), Body(b"abcdefgh"), EndOfMessage(b"XYZ")]
    _dialogue([POSTFIX_OFFER, Mail(("<a@b>",)), *chunks], handler, options)
    (envelope,) = handler.envelopes
    assert envelope.body == b"12345678ab"
    assert envelope.body_truncated
    assert envelope.body_size == 19


def _eom_replies(
    actions: Sequence[Action] = (),
    options: MilterOptions | None = None,
    error: Exception | None = None,
) -> list[Reply]:
    handler = RecordingHandler(actions)
    handler.error = error
    commands: list[Command] = [POSTFIX_OFFER, Mail(("<a@b>",)), EndOfMessage()]
    return _dialogue(commands, handler, options)[1][-1]


def test_modifications_go_before_the_final_reply() -> None:
    """A final reply listed first is still sent after the modifications."""
    actions: list[Action] = [Reject(), AddHeader("X-A", "1")]
    assert _eom_replies(actions) == [AddHeader("X-A", "1"), Reject()]


def test_no_final_reply_means_continue() -> None:
    """Modifications alone are followed by CONTINUE."""
    assert _eom_replies([Quarantine("q")]) == [Quarantine("q"), Continue()]


def test_replycode_reaches_the_mta() -> None:
    """A ReplyCode action becomes SMFIR_REPLYCODE."""
    reply = ReplyCode(550, "5.7.1", "phishing")
    assert _eom_replies([reply]) == [reply]


def test_handler_error_answers_fallback(caplog: pytest.LogCaptureFixture) -> None:
    """A raising handler gets the fallback reply and a logged traceback."""
    with caplog.at_level(logging.ERROR, "phishgate.milter.session"):
        assert _eom_replies(error=RuntimeError("boom")) == [TempFail()]
    assert "milter handler failed" in caplog.text
    options = MilterOptions(fallback=Continue())
    assert _eom_replies(options=options, error=RuntimeError("boom")) == [Continue()]


@pytest.mark.parametrize(
    "actions",
    [[ReplaceBody(b"x")], [Reject(), Continue()], [AddHeader("Bad Name", "x")]],
    ids=["not negotiated", "two finals", "bad header"],
)
def test_invalid_actions_answer_fallback(actions: list[Action]) -> None:
    """Un-negotiated, doubled or invalid actions send nothing but the fallback."""
    assert _eom_replies(actions) == [TempFail()]


def test_leading_space_option() -> None:
    """With HDR_LEADSPC, values keep their space in and gain one out."""
    options = MilterOptions(header_leading_space=True)
    handler = RecordingHandler([AddHeader("X-A", "v"), ChangeHeader(1, "X-B", "")])
    commands: list[Command] = [POSTFIX_OFFER, Header("Subject", " hi"), EndOfMessage()]
    _, replies = _dialogue(commands, handler, options)
    optneg = replies[0][0]
    assert isinstance(optneg, OptNegReply)
    assert optneg.protocol & p.SMFIP_HDR_LEADSPC
    assert handler.envelopes[0].headers == [("Subject", " hi")]
    assert replies[-1] == [
        AddHeader("X-A", " v"),
        ChangeHeader(1, "X-B", ""),
        Continue(),
    ]


def test_configured_steps_and_actions() -> None:
    """Options choose skipped steps and requested actions; no macros, no SETSYMLIST."""
    options = MilterOptions(
        steps=Step.MAIL | Step.BODY, actions=p.SMFIF_CHGBODY, macros={}
    )
    _, replies = _dialogue([POSTFIX_OFFER], RecordingHandler(), options)
    optneg = replies[0][0]
    assert isinstance(optneg, OptNegReply)
    assert optneg.actions == p.SMFIF_CHGBODY
    assert optneg.macros == {}
    assert optneg.protocol & p.SMFIP_NOHDRS
    assert optneg.protocol & p.SMFIP_NOCONNECT
    assert not optneg.protocol & p.SMFIP_NOBODY


def test_command_before_optneg_is_a_protocol_error() -> None:
    """Only OPTNEG may open a connection."""
    with pytest.raises(ProtocolError, match="before OPTNEG"):
        _dialogue([Helo("x")], RecordingHandler())


def test_ancient_version_is_refused() -> None:
    """Protocol version 1 is refused."""
    with pytest.raises(ProtocolError, match="too old"):
        _dialogue([OptNeg(1, 0xF, 0)], RecordingHandler())


def test_quit_no_close_starts_a_new_smtp_session() -> None:
    """QUIT_NC ends the SMTP session (close hook) but keeps the connection."""
    handler = RecordingHandler()
    commands = [*connection_commands(), Mail(("<a@b>",)), QuitNoClose()]
    session, _ = _dialogue(commands, handler)
    assert handler.closed == [session]
    assert len(handler.aborted) == 1
    assert not session.closed
    assert session.client is None
    assert session.macros == {}


def test_handle_now_applies_steps_and_defers_hooks() -> None:
    """Steps apply without awaiting; EOM, QUIT and an ABORT in a message defer."""
    handler = RecordingHandler()
    session = Session(handler, peer="test")
    optneg, *steps = [*connection_commands(), *message_commands()[:-2]]
    assert session.handle_now(optneg)  # the OPTNEG reply
    assert all(session.handle_now(command) == b"" for command in steps)
    assert session.in_message
    assert session.handle_now(EndOfMessage()) is None
    assert session.handle_now(Abort()) is None
    assert session.handle_now(Quit()) is None
    assert handler.envelopes == []
    assert handler.aborted == []
