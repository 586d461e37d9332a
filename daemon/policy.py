"""Policy: turn a verdict into an action, with lists and per-domain thresholds.

Thresholds come from ``[policy]`` when set, else from the model's metadata
(chosen on validation data for 1 % and 0.5 % ham false positives).
Recipient-domain overrides (``[[policy.domains]]``) apply per recipient;
a front door that cannot split a message (the milter) takes the most
protective action over its recipients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .config import Config, DomainPolicy
from .message import address_of, domain_of
from .model import Thresholds

if TYPE_CHECKING:
    from .pipeline import MessageEnvelope
    from .scanner import ScanResult

__all__ = ["SEVERITY", "Policy", "PolicyResult"]

SEVERITY = {"accept": 0, "tag": 1, "quarantine": 2, "reject": 3}


@dataclass(frozen=True)
class PolicyResult:
    action: str
    reason: str = ""
    per_recipient: tuple[tuple[str, str], ...] = ()


def _matches(domain: str, entries: tuple[str, ...]) -> bool:
    """``example.org`` matches itself only, ``.example.org`` any subdomain."""
    for entry in entries:
        entry = entry.lower()
        if domain.endswith(entry) if entry.startswith(".") else domain == entry:
            return True
    return False


class Policy:
    """Actions from verdicts under one configuration."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def thresholds(
        self, model: Thresholds, domain: DomainPolicy | None = None
    ) -> Thresholds:
        p = self.config.policy
        d = domain or DomainPolicy()
        tag = _first(d.tag_at, p.tag_at, model.tag)
        quarantine = _first(d.quarantine_at, p.quarantine_at, model.quarantine)
        reject = _first(d.reject_at, p.reject_at, model.reject)
        return Thresholds(tag, max(tag, quarantine), max(tag, quarantine, reject))

    def domain_policy(self, recipient: str) -> DomainPolicy | None:
        domain = domain_of(recipient)
        for entry in self.config.policy.domains:
            bare = entry.domain.lstrip(".")
            if _matches(domain, (bare, "." + bare)):
                return entry
        return None

    def listed(self, envelope: MessageEnvelope, from_header: str) -> str:
        """``allow``, ``block`` or ``""`` for the sender and From domain."""
        lists = self.config.lists
        senders = {envelope.mail_from.lower(), address_of(from_header)[1]} - {""}
        domains = {domain_of(s) for s in senders} - {""}
        if senders & {s.lower() for s in lists.block_senders} or any(
            _matches(d, lists.block_domains) for d in domains
        ):
            return "block"
        if senders & {s.lower() for s in lists.allow_senders} or any(
            _matches(d, lists.allow_domains) for d in domains
        ):
            return "allow"
        return ""

    def decide(self, envelope: MessageEnvelope, result: ScanResult) -> PolicyResult:
        """The action for a scanned message."""
        listed = self.listed(envelope, result.from_header)
        if listed == "block":
            return PolicyResult("reject", "sender on the block list")
        if listed == "allow":
            return PolicyResult("accept", "sender on the allow list")
        model = result.verdict
        per_recipient = []
        for rcpt in envelope.rcpt_to or ("",):
            domain = self.domain_policy(rcpt) if rcpt else None
            if domain is not None and not domain.scan:
                per_recipient.append((rcpt, "accept"))
                continue
            thresholds = self.thresholds(result.thresholds, domain)
            per_recipient.append((rcpt, thresholds.action(model.phish)))
        action = max((a for _, a in per_recipient), key=SEVERITY.__getitem__)
        return PolicyResult(action, "", tuple(per_recipient))


def _first(*values: float | None) -> float:
    for value in values:
        if isinstance(value, float):
            return value
    raise ValueError("no threshold")
