"""The envelope: what the MTA told the filter about one message."""

from __future__ import annotations

from dataclasses import dataclass, field

from . import protocol as p


@dataclass
class Envelope:
    """One message as the MTA reported it, handed to the handler at its end.

    Addresses lose their angle brackets (``<>`` becomes ``""``). Macro names
    lose their braces (``{auth_authen}`` is ``auth_authen``). ``body`` holds
    at most ``max_body_bytes`` (see :class:`~.options.MilterOptions`);
    ``body_size`` counts every byte the MTA sent, and ``body_truncated`` says
    whether some were dropped.
    """

    client_name: str = ""
    client_address: str = ""
    client_port: int = 0
    client_family: str = p.SMFIA_UNKNOWN
    helo: str = ""
    mail_from: str | None = None
    mail_args: list[str] = field(default_factory=list)
    rcpt_to: list[str] = field(default_factory=list)
    rcpt_args: list[list[str]] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    body_size: int = 0
    body_truncated: bool = False
    macros: dict[str, str] = field(default_factory=dict)

    @property
    def queue_id(self) -> str | None:
        """The MTA's queue id (macro ``i``), once the MTA has sent it."""
        return self.macros.get("i")

    @property
    def auth_authen(self) -> str | None:
        """The SASL login name, if the client authenticated."""
        return self.macros.get("auth_authen") or None

    @property
    def message_id(self) -> str | None:
        """The first Message-ID header value, stripped, if there is one."""
        for name, value in self.headers:
            if name.lower() == "message-id":
                return value.strip()
        return None

    def header_values(self, name: str) -> list[str]:
        """All values of the header fields called ``name``, in message order."""
        wanted = name.lower()
        return [
            value for field_name, value in self.headers if field_name.lower() == wanted
        ]


def strip_brackets(address: str) -> str:
    """``<a@b>`` -> ``a@b``; anything else unchanged."""
    if address.startswith("<") and address.endswith(">"):
        return address[1:-1]
    return address


def macro_name(name: str) -> str:
    """``{auth_authen}`` -> ``auth_authen``; one-letter names unchanged."""
    if name.startswith("{") and name.endswith("}"):
        return name[1:-1]
    return name
