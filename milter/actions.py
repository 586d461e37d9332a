"""What a filter can answer at the end of a message.

An answer is zero or more *modifications* followed by exactly one *final
reply*. The codec turns each of these into one or more SMFIR_* packets; the
MTA-side decoder in the codec turns packets back into them.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import protocol


@dataclass(frozen=True)
class Continue:
    """Go on with the message (SMFIR_CONTINUE); at end of message: deliver it."""


@dataclass(frozen=True)
class Accept:
    """Accept the message without further filtering (SMFIR_ACCEPT)."""


@dataclass(frozen=True)
class Reject:
    """Reject with the MTA's default 5xx reply (SMFIR_REJECT)."""


@dataclass(frozen=True)
class Discard:
    """Accept, then silently drop the message (SMFIR_DISCARD)."""


@dataclass(frozen=True)
class TempFail:
    """Refuse with the MTA's default 4xx reply (SMFIR_TEMPFAIL)."""


@dataclass(frozen=True)
class ReplyCode:
    """Refuse with this SMTP reply (SMFIR_REPLYCODE), e.g. 550 5.7.1 text.

    ``code`` must be 4xx or 5xx; ``xcode`` is an optional RFC 3463 enhanced
    status code whose class matches ``code``.
    """

    code: int
    xcode: str = ""
    text: str = ""


@dataclass(frozen=True)
class AddHeader:
    """Append a header field (SMFIR_ADDHEADER; needs SMFIF_ADDHDRS)."""

    name: str
    value: str


@dataclass(frozen=True)
class InsertHeader:
    """Insert a header field at ``index``, 0 = first (SMFIR_INSHEADER)."""

    index: int
    name: str
    value: str


@dataclass(frozen=True)
class ChangeHeader:
    """Replace the ``index``-th (from 1) field called ``name`` (SMFIR_CHGHEADER).

    An empty value deletes that field. Needs SMFIF_CHGHDRS.
    """

    index: int
    name: str
    value: str


@dataclass(frozen=True)
class ReplaceBody:
    """Replace the body, or one chunk of it (SMFIR_REPLBODY; needs SMFIF_CHGBODY)."""

    body: bytes


@dataclass(frozen=True)
class Quarantine:
    """Hold the message (SMFIR_QUARANTINE; needs SMFIF_QUARANTINE).

    A modification, not a final reply: the MTA still waits for one.
    """

    reason: str


@dataclass(frozen=True)
class AddRecipient:
    """Add an envelope recipient (SMFIR_ADDRCPT; needs SMFIF_ADDRCPT)."""

    address: str


@dataclass(frozen=True)
class DeleteRecipient:
    """Remove an envelope recipient, as the MTA received it (SMFIR_DELRCPT).

    Needs SMFIF_DELRCPT. The address must match the RCPT TO argument.
    """

    address: str


FinalAction = Continue | Accept | Reject | Discard | TempFail | ReplyCode
"""Replies that end the MTA's wait for this command."""

Modification = (
    AddHeader
    | InsertHeader
    | ChangeHeader
    | ReplaceBody
    | Quarantine
    | AddRecipient
    | DeleteRecipient
)
"""End-of-message changes; they must come before the final reply."""

Action = FinalAction | Modification

FINAL_ACTIONS = (Continue, Accept, Reject, Discard, TempFail, ReplyCode)
MODIFICATIONS = (
    AddHeader,
    InsertHeader,
    ChangeHeader,
    ReplaceBody,
    Quarantine,
    AddRecipient,
    DeleteRecipient,
)

REQUIRED_ACTION_FLAG: dict[type[Modification], int] = {
    AddHeader: protocol.SMFIF_ADDHDRS,
    InsertHeader: protocol.SMFIF_ADDHDRS,
    ChangeHeader: protocol.SMFIF_CHGHDRS,
    ReplaceBody: protocol.SMFIF_CHGBODY,
    Quarantine: protocol.SMFIF_QUARANTINE,
    AddRecipient: protocol.SMFIF_ADDRCPT,
    DeleteRecipient: protocol.SMFIF_DELRCPT,
}
"""The SMFIF_* flag that must have been negotiated for each modification."""


def is_final(action: Action) -> bool:
    """Tell whether ``action`` is a final reply rather than a modification."""
    return isinstance(action, FINAL_ACTIONS)
