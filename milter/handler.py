"""The interface a filter implements."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .actions import Action

if TYPE_CHECKING:
    from .envelope import Envelope
    from .session import Session


# TODO(a filter must refuse before DATA): add per-step hooks (connect, mail,
# rcpt) with replies; today every step before end of message is negotiated as
# "no reply", which is what a content scanner wants and keeps Postfix fast.


class Handler(abc.ABC):
    """Decides what happens to each message; one instance serves all sessions.

    Only :meth:`end_of_message` is required. Per-connection state can live in
    :attr:`Session.state <phishgate.milter.session.Session.state>`.
    """

    @abc.abstractmethod
    async def end_of_message(
        self, session: Session, envelope: Envelope
    ) -> Sequence[Action]:
        """Return modifications, then at most one final reply (default Continue).

        Modifications must have been negotiated (see ``session.actions``).
        If this raises, the session answers ``MilterOptions.fallback``. It is
        cancelled if the MTA closes the connection meanwhile.
        """

    async def abort(self, session: Session, envelope: Envelope) -> None:
        """The MTA dropped the message before its end (RSET, client gone)."""
        return None  # optional hook

    async def close(self, session: Session) -> None:
        """The MTA ended the SMTP session or the connection went away."""
        return None  # optional hook
