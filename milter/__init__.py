"""An asyncio milter library: codec, negotiation, sessions and a server.

It knows nothing of phishing. A filter subclasses :class:`Handler`, returns
:mod:`actions <phishgate.milter.actions>` from ``end_of_message`` and runs a
:class:`MilterServer`.
"""

from .actions import (
    Accept,
    Action,
    AddHeader,
    AddRecipient,
    ChangeHeader,
    Continue,
    DeleteRecipient,
    Discard,
    FinalAction,
    InsertHeader,
    Modification,
    Quarantine,
    Reject,
    ReplaceBody,
    ReplyCode,
    TempFail,
)
from .codec import Decoder, ProtocolError, ReplyDecoder
from .envelope import Envelope
from .handler import Handler
from .options import DEFAULT_MACROS, MilterOptions, Step
from .server import ListenSpec, MilterServer, parse_listen_spec
from .session import Negotiation, Session

__all__ = [
    "DEFAULT_MACROS",
    "Accept",
    "Action",
    "AddHeader",
    "AddRecipient",
    "ChangeHeader",
    "Continue",
    "Decoder",
    "DeleteRecipient",
    "Discard",
    "Envelope",
    "FinalAction",
    "Handler",
    "InsertHeader",
    "ListenSpec",
    "MilterOptions",
    "MilterServer",
    "Modification",
    "Negotiation",
    "ProtocolError",
    "Quarantine",
    "Reject",
    "ReplaceBody",
    "ReplyCode",
    "ReplyDecoder",
    "Session",
    "Step",
    "TempFail",
    "parse_listen_spec",
]
