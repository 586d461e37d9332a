"""Configuration: one frozen, validated object built from a TOML file.

Unknown keys and impossible values are errors that name the key; the daemon
refuses to start on them (and keeps its old configuration on SIGHUP).
Every key is documented in ``phishgate.example.toml``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "Config",
    "ConfigError",
    "DomainPolicy",
    "load_config",
]

DEFAULT_CONFIG_PATH = Path("/etc/phishgate/phishgate.toml")
QUARANTINE_MODES = ("hold", "store")
ON_ERROR = ("accept", "tempfail")
ACTIONS = ("accept", "tag", "quarantine", "reject")
_ADDRESS = re.compile(r"[^@\s<>]+@[^@\s<>]+")
MAX_WORKERS = 256
RENAMED = {"daemon.scan_processes": "daemon.workers"}
"""Keys of earlier versions, so the error says what to write instead."""


class ConfigError(Exception):
    """A configuration that cannot be used; the message names the key."""


@dataclass(frozen=True)
class MilterConfig:
    listen: str = "inet:127.0.0.1:8895"
    socket_mode: str = "0660"
    max_body_bytes: int = 10 * 1024 * 1024
    progress_interval_s: float = 5.0


@dataclass(frozen=True)
class ProxyConfig:
    listen: str = "127.0.0.1:10025"
    reinject: str = "127.0.0.1:10026"
    hostname: str = "phishgate.localhost"
    timeout_s: float = 60.0
    max_message_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class QuarantineConfig:
    retention_days: int = 30
    postfix_config_dir: str = ""
    digest_from: str = ""
    digest_via: str = ""


@dataclass(frozen=True)
class DaemonConfig:
    workers: int | str = "auto"
    """Scan processes: "auto" (one per usable core), 1 (scan in the daemon's
    own process, in threads) or N >= 2 worker processes."""


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = "127.0.0.1:9775"


@dataclass(frozen=True)
class StorageConfig:
    state_dir: str = ""
    retention_days: int = 90


@dataclass(frozen=True)
class ModelConfig:
    path: str = ""


@dataclass(frozen=True)
class RetrainConfig:
    """``phishgate retrain``: what it learns from and when it may publish."""

    corpora: tuple[str, ...] = ()
    min_new_labels: int = 50
    tolerance: float = 0.01
    holdback_share: float = 0.2
    rounds: int = 60


@dataclass(frozen=True)
class DomainPolicy:
    """Overrides for recipients in one domain (and its subdomains)."""

    domain: str = ""
    tag_at: float | None = None
    quarantine_at: float | None = None
    reject_at: float | None = None
    scan: bool = True


@dataclass(frozen=True)
class PolicyConfig:
    tag_at: float | None = None
    quarantine_at: float | None = None
    reject_at: float | None = None
    quarantine: str = "hold"
    subject_tag: str = "[PHISH?] "
    on_error: str = "accept"
    scan_timeout_s: float = 10.0
    max_scan_bytes: int = 4 * 1024 * 1024
    domains: tuple[DomainPolicy, ...] = ()


@dataclass(frozen=True)
class ListsConfig:
    allow_senders: tuple[str, ...] = ()
    allow_domains: tuple[str, ...] = ()
    block_senders: tuple[str, ...] = ()
    block_domains: tuple[str, ...] = ()


@dataclass(frozen=True)
class AuthConfig:
    trusted_authserv_ids: tuple[str, ...] = ()
    dkim_verify: bool = False
    dns_timeout_s: float = 3.0


@dataclass(frozen=True)
class FeedbackConfig:
    """Report addresses: users forward phish (or wrongly flagged mail) here."""

    phish_address: str = ""
    ham_address: str = ""
    trusted_networks: tuple[str, ...] = ()
    forward_to: str = ""
    acknowledge: bool = False
    send_via: str = ""
    rate_limit_per_hour: int = 30
    accept_unmatched: bool = True
    match_days: int = 30

    @property
    def addresses(self) -> dict[str, str]:
        """Report address (lower case) -> the label a report to it gives."""
        pairs = ((self.phish_address, "phish"), (self.ham_address, "ham"))
        return {address.lower(): label for address, label in pairs if address}


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"
    format: str = "text"


@dataclass(frozen=True)
class DriftConfig:
    """Drift and live-quality monitoring in the daemon, and what crossing does."""

    window_hours: float = 24.0
    interval_s: float = 300.0
    threshold: float = 0.25
    retrain: bool = False
    retrain_cooldown_hours: float = 24.0
    labels_window_days: float = 30.0


@dataclass(frozen=True)
class Config:
    """The whole configuration; ``source`` names the file it came from."""

    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    milter: MilterConfig = field(default_factory=MilterConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    quarantine: QuarantineConfig = field(default_factory=QuarantineConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    lists: ListsConfig = field(default_factory=ListsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    source: str = "built-in defaults"

    @property
    def state_dir(self) -> Path:
        """``[storage] state_dir``, or a per-user folder when run by hand."""
        if self.storage.state_dir:
            return Path(self.storage.state_dir)
        if os.environ.get("STATE_DIRECTORY"):  # set by systemd's StateDirectory=
            return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(base) / "phishgate"


T = TypeVar("T")


def _build(cls: type[T], data: Any, where: str) -> T:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls) if f.name != "source"}  # type: ignore[arg-type]  # cls is a dataclass
    unknown = sorted(set(data) - known)
    if unknown:
        key = f"{where}.{unknown[0]}"
        renamed = RENAMED.get(key.removeprefix("config."))
        why = f"renamed, use {renamed}" if renamed else "unknown key"
        raise ConfigError(f"{key}: {why}")
    values = {
        name: _convert(hints[name], data[name], f"{where}.{name}") for name in data
    }
    return cls(**values)


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = get_origin(hint)
    if is_dataclass(hint):
        return _build(hint, value, where)  # type: ignore[arg-type]  # hint is a class here
    if origin is tuple:
        (item,) = {a for a in get_args(hint) if a is not Ellipsis}
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list")
        return tuple(_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    args = get_args(hint)
    if args and type(None) in args:  # float | None
        hint = next(a for a in args if a is not type(None))
    elif args:  # int | str: the first type the value fits
        for choice in args:
            with contextlib.suppress(ConfigError):
                return _convert(choice, value, where)
        names = " or ".join(a.__name__ for a in args)
        raise ConfigError(f"{where}: expected {names}, got {value!r}")
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint in (str, bool) and isinstance(value, hint):
        return value
    raise ConfigError(
        f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r}"
    )


def _check_listen(spec: str, where: str) -> None:
    kind, _, rest = spec.partition(":")
    if kind == "unix" and rest.startswith("/"):
        return
    if kind in ("inet", "inet6") and rest.rpartition(":")[2].isdigit():
        return
    raise ConfigError(f"{where}: expected inet:HOST:PORT or unix:/path, got {spec!r}")


def _check_host_port(value: str, where: str, optional: bool) -> None:
    if optional and not value:
        return
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{where}: expected HOST:PORT, got {value!r}")


def _check_probability(value: float | None, where: str) -> None:
    if value is not None and not 0.0 < value <= 1.0:
        raise ConfigError(f"{where}: must be in (0, 1], got {value}")


def _validate(config: Config) -> Config:
    _check_listen(config.milter.listen, "milter.listen")
    for key, value in (
        ("metrics.listen", config.metrics.listen),
        ("proxy.listen", config.proxy.listen),
        ("proxy.reinject", config.proxy.reinject),
    ):
        _check_host_port(value, key, optional=key != "proxy.reinject")
    _check_workers(config.daemon.workers)
    if config.quarantine.retention_days < 1:
        raise ConfigError("quarantine.retention_days: must be at least 1")
    digest_from = config.quarantine.digest_from
    if digest_from and not _ADDRESS.fullmatch(digest_from):
        raise ConfigError(
            f"quarantine.digest_from: not a mail address: {digest_from!r}"
        )
    _check_host_port(config.quarantine.digest_via, "quarantine.digest_via", True)
    try:
        int(config.milter.socket_mode, 8)
    except ValueError:
        raise ConfigError(
            f"milter.socket_mode: not an octal mode: {config.milter.socket_mode!r}"
        ) from None
    policy = config.policy
    if policy.quarantine not in QUARANTINE_MODES:
        raise ConfigError(f"policy.quarantine: one of {', '.join(QUARANTINE_MODES)}")
    if policy.on_error not in ON_ERROR:
        raise ConfigError(f"policy.on_error: one of {', '.join(ON_ERROR)}")
    if policy.scan_timeout_s <= 0:
        raise ConfigError("policy.scan_timeout_s: must be positive")
    for key in ("tag_at", "quarantine_at", "reject_at"):
        _check_probability(getattr(policy, key), f"policy.{key}")
    for i, domain in enumerate(policy.domains):
        if not domain.domain:
            raise ConfigError(f"policy.domains[{i}].domain: required")
        for key in ("tag_at", "quarantine_at", "reject_at"):
            _check_probability(getattr(domain, key), f"policy.domains[{i}].{key}")
    if config.logging.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("logging.level: one of debug, info, warning, error")
    if config.logging.format not in ("text", "json"):
        raise ConfigError("logging.format: one of text, json")
    for i, net in enumerate(config.auth.trusted_authserv_ids):
        if not net:
            raise ConfigError(f"auth.trusted_authserv_ids[{i}]: empty")
    _check_retrain(config.retrain)
    _check_feedback(config.feedback)
    _check_drift(config.drift)
    return config


def _check_feedback(feedback: FeedbackConfig) -> None:
    for key in ("phish_address", "ham_address", "forward_to"):
        value = getattr(feedback, key)
        if value and not _ADDRESS.fullmatch(value):
            raise ConfigError(f"feedback.{key}: not a mail address: {value!r}")
    if feedback.phish_address and (
        feedback.phish_address.lower() == feedback.ham_address.lower()
    ):
        raise ConfigError("feedback.ham_address: must differ from phish_address")
    if feedback.forward_to.lower() in feedback.addresses:
        raise ConfigError("feedback.forward_to: must not be a report address")
    network_list(feedback.trusted_networks, "feedback.trusted_networks")
    _check_host_port(feedback.send_via, "feedback.send_via", optional=True)
    if feedback.rate_limit_per_hour < 1:
        raise ConfigError("feedback.rate_limit_per_hour: must be at least 1")
    if feedback.match_days < 1:
        raise ConfigError("feedback.match_days: must be at least 1")


def _check_workers(workers: int | str) -> None:
    if workers == "auto":
        return
    if isinstance(workers, int) and 1 <= workers <= MAX_WORKERS:
        return
    raise ConfigError(
        f'daemon.workers: "auto" or a number from 1 to {MAX_WORKERS}, got {workers!r}'
    )


def _check_retrain(retrain: RetrainConfig) -> None:
    for i, spec in enumerate(retrain.corpora):
        path, _, label = spec.rpartition(":")
        if not path or label not in ("ham", "spam", "phish"):
            raise ConfigError(
                f"retrain.corpora[{i}]: expected PATH:ham|spam|phish, got {spec!r}"
            )
    if retrain.min_new_labels < 0:
        raise ConfigError("retrain.min_new_labels: must not be negative")
    if not 0.0 <= retrain.tolerance < 1.0:
        raise ConfigError("retrain.tolerance: must be in [0, 1)")
    if not 0.0 < retrain.holdback_share < 1.0:
        raise ConfigError("retrain.holdback_share: must be in (0, 1)")
    if not 1 <= retrain.rounds <= 5000:
        raise ConfigError("retrain.rounds: between 1 and 5000")


def _check_drift(drift: DriftConfig) -> None:
    for key, low, high in (
        ("window_hours", 0.0, 24.0 * 366),
        ("interval_s", 0.0, 86400.0),
        ("threshold", 0.0, 100.0),
        ("labels_window_days", 0.0, 3660.0),
    ):
        value = getattr(drift, key)
        if not low < value <= high:
            raise ConfigError(
                f"drift.{key}: must be above {low:g} and at most {high:g}"
            )
    if drift.retrain_cooldown_hours < 0:
        raise ConfigError("drift.retrain_cooldown_hours: must not be negative")


def parse_config(text: str, source: str) -> Config:
    """Build a validated :class:`Config` from TOML text."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    try:
        sections = {k: v for k, v in data.items()}
        config = _build(Config, sections, "config")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {str(exc).removeprefix('config.')}") from None
    config = Config(
        **{
            f.name: getattr(config, f.name)
            for f in fields(Config)
            if f.name != "source"
        },
        source=source,
    )
    try:
        return _validate(config)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_config(path: str | Path | None = None) -> Config:
    """Load *path*; without one, the default file if it exists, else defaults."""
    if path is None:
        if not DEFAULT_CONFIG_PATH.exists():
            return Config()
        path = DEFAULT_CONFIG_PATH
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from None
    return parse_config(text, str(path))


def network_list(
    values: tuple[str, ...], where: str
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Parse CIDRs, naming the bad one."""
    out = []
    for i, value in enumerate(values):
        try:
            out.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise ConfigError(f"{where}[{i}]: not a network: {value!r}") from None
    return tuple(out)
