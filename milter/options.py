"""What a filter asks the MTA for: steps, actions, macros, limits."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from . import protocol as p
from .actions import FINAL_ACTIONS, FinalAction, TempFail


class Step(enum.Flag):
    """SMTP stages the MTA reports to the filter before end of message."""

    CONNECT = enum.auto()
    HELO = enum.auto()
    MAIL = enum.auto()
    RCPT = enum.auto()
    DATA = enum.auto()
    HEADERS = enum.auto()
    EOH = enum.auto()
    BODY = enum.auto()
    UNKNOWN = enum.auto()


SKIP_FLAG: Mapping[Step, int] = MappingProxyType(
    {
        Step.CONNECT: p.SMFIP_NOCONNECT,
        Step.HELO: p.SMFIP_NOHELO,
        Step.MAIL: p.SMFIP_NOMAIL,
        Step.RCPT: p.SMFIP_NORCPT,
        Step.DATA: p.SMFIP_NODATA,
        Step.HEADERS: p.SMFIP_NOHDRS,
        Step.EOH: p.SMFIP_NOEOH,
        Step.BODY: p.SMFIP_NOBODY,
        Step.UNKNOWN: p.SMFIP_NOUNKNOWN,
    }
)
"""The SMFIP_NO* flag that asks the MTA not to send a step at all."""

NO_REPLY_FLAG: Mapping[Step, int] = MappingProxyType(
    {
        Step.CONNECT: p.SMFIP_NR_CONN,
        Step.HELO: p.SMFIP_NR_HELO,
        Step.MAIL: p.SMFIP_NR_MAIL,
        Step.RCPT: p.SMFIP_NR_RCPT,
        Step.DATA: p.SMFIP_NR_DATA,
        Step.HEADERS: p.SMFIP_NR_HDR,
        Step.EOH: p.SMFIP_NR_EOH,
        Step.BODY: p.SMFIP_NR_BODY,
        Step.UNKNOWN: p.SMFIP_NR_UNKN,
    }
)
"""The SMFIP_NR_* flag that tells the MTA not to wait for a reply to a step."""

ENVELOPE_STEPS = Step.CONNECT | Step.HELO | Step.MAIL | Step.RCPT
DEFAULT_STEPS = ENVELOPE_STEPS | Step.HEADERS | Step.BODY
"""Enough to fill an :class:`~.envelope.Envelope`; DATA, EOH, UNKNOWN skipped."""

DEFAULT_ACTIONS = p.SMFIF_ADDHDRS | p.SMFIF_CHGHDRS | p.SMFIF_QUARANTINE

DEFAULT_MACROS: Mapping[int, tuple[str, ...]] = MappingProxyType(
    {
        p.SMFIM_CONNECT: ("j", "{daemon_name}", "{daemon_addr}", "v", "_"),
        p.SMFIM_HELO: ("{tls_version}", "{cipher}", "{cipher_bits}"),
        p.SMFIM_ENVFROM: ("i", "{auth_type}", "{auth_authen}", "{auth_author}"),
        p.SMFIM_ENVRCPT: ("i", "{rcpt_addr}"),
        p.SMFIM_DATA: ("i",),
        p.SMFIM_EOM: ("i",),
    }
)
"""Macros requested per stage. A request replaces the MTA's list for that stage.

The queue id ``i`` is asked for at end of message too: Postfix knows it only
after the first valid RCPT (postfix-lab README, measured behaviour).
"""

DEFAULT_MAX_BODY = 10 * 1024 * 1024
DEFAULT_PROGRESS_INTERVAL = 5.0


@dataclass(frozen=True)
class MilterOptions:
    """Everything a filter negotiates or limits, fixed for the server's life.

    ``steps`` are the stages whose data the handler needs; the MTA is asked to
    skip the others and never to wait for a reply before end of message.
    ``actions`` (SMFIF_*) are intersected with what the MTA offers.
    ``fallback`` answers a message whose handler raised or returned nonsense.
    ``progress_interval`` is how often SMFIR_PROGRESS goes out while an
    end-of-message handler runs.
    """

    steps: Step = DEFAULT_STEPS
    actions: int = DEFAULT_ACTIONS
    macros: Mapping[int, tuple[str, ...]] = field(
        default_factory=lambda: DEFAULT_MACROS
    )
    header_leading_space: bool = False
    max_body_bytes: int = DEFAULT_MAX_BODY
    max_packet_bytes: int = p.DEFAULT_MAX_PACKET
    fallback: FinalAction = field(default_factory=TempFail)
    progress_interval: float = DEFAULT_PROGRESS_INTERVAL

    def __post_init__(self) -> None:
        if self.max_body_bytes < 0:
            raise ValueError(f"max_body_bytes must be >= 0, not {self.max_body_bytes}")
        if self.max_packet_bytes < p.MILTER_CHUNK_SIZE + 1:
            raise ValueError(f"max_packet_bytes must be > {p.MILTER_CHUNK_SIZE}")
        if not self.progress_interval > 0:
            raise ValueError("progress_interval must be positive")
        if not isinstance(self.fallback, FINAL_ACTIONS):
            raise ValueError(f"fallback must be a final action, not {self.fallback}")
