"""The live models directory: versioned models and the pointer to the active one.

Layout under the state directory::

    models/<version>/    model.txt + meta.json, one folder per published model
    models/active        the active version's name, one line ("bundled" or a
                         folder name); absent means the bundled model
    models/history       the versions activated so far, oldest first, one a line
    models/.lock         serialises pointer changes (activate, rollback)

The pointer is a small file, not a symlink: it is written to a temp name and
renamed over the old one (``os.replace``), so a reader sees either the old or
the new name, never half of one. A file can name the bundled model, which
lives inside the installed package and moves on every upgrade; a symlink to it
would dangle after one. A watcher sees the switch as a move onto ``active``.

Folders whose names start with a dot are work in progress (a model being
written, a temp pointer) and are never listed or served. Every activation,
rollback included, first loads the model with :meth:`Model.load`, which checks
the feature schema and the checksum: a bad model is refused and the pointer
stays where it was.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Config
from .model import META_FILE, Model, ModelError, default_model_dir

__all__ = [
    "BUNDLED",
    "ModelsDirError",
    "VersionInfo",
    "activate",
    "active_path",
    "active_version",
    "list_versions",
    "models_dir",
    "rollback",
    "serving_model_dir",
    "show",
    "version_path",
]

log = logging.getLogger(__name__)

BUNDLED = "bundled"
MODELS_DIRNAME = "models"
ACTIVE_FILE = "active"
HISTORY_FILE = "history"
LOCK_FILE = ".lock"
# Version names are folder names: no path separators, no leading dot.
_VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_RESERVED = {ACTIVE_FILE, HISTORY_FILE}


class ModelsDirError(ModelError):
    """The models directory cannot do what was asked; the message says why."""


@dataclass(frozen=True)
class VersionInfo:
    """One entry of ``phishgate model list``."""

    version: str
    path: Path
    active: bool
    created: str | None
    model_version: str | None
    parent: str | None
    gate: dict[str, Any] | None
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "active": self.active,
            "created": self.created,
            "model_version": self.model_version,
            "parent": self.parent,
            "decision": (self.gate or {}).get("decision"),
            "gate": self.gate,
            "path": str(self.path),
            "error": self.error,
        }


def models_dir(state_dir: Path) -> Path:
    return state_dir / MODELS_DIRNAME


def _check_name(version: str) -> str:
    if not _VERSION_NAME.fullmatch(version) or version in _RESERVED:
        raise ModelsDirError(f"{version!r}: not a model version name")
    return version


def version_path(state_dir: Path, version: str) -> Path:
    """The folder of *version* (the package's folder for ``bundled``)."""
    if version == BUNDLED:
        return default_model_dir()
    return models_dir(state_dir) / _check_name(version)


def active_version(state_dir: Path) -> str:
    """The name in the pointer file, or ``bundled`` when there is none."""
    pointer = models_dir(state_dir) / ACTIVE_FILE
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return BUNDLED
    except OSError as exc:
        raise ModelsDirError(f"{pointer}: {exc.strerror or exc}") from None
    try:
        return _check_name(name)
    except ModelsDirError:
        raise ModelsDirError(f"{pointer}: names no model version: {name!r}") from None


def active_path(state_dir: Path) -> Path:
    """The folder of the active model; raises if the pointer names none."""
    version = active_version(state_dir)
    path = version_path(state_dir, version)
    if not path.is_dir():
        raise ModelsDirError(
            f"{models_dir(state_dir) / ACTIVE_FILE}: version {version} has no "
            f"folder {path} (fix with `phishgate model activate VERSION`)"
        )
    return path


def serving_model_dir(config: Config) -> Path:
    """The model folder the daemon serves.

    ``[model] path`` when set (the admin pinned a model), else the active
    version of ``STATE/models`` (the bundled model until one is activated).
    Raises :class:`ModelsDirError` when the pointer names a missing version.
    """
    if config.model.path:
        return Path(config.model.path)
    return active_path(config.state_dir)


def _read_meta(path: Path) -> dict[str, Any]:
    meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    if not isinstance(meta, dict):
        raise ValueError("meta.json is not a JSON object")
    return meta


def _info(version: str, path: Path, active: str) -> VersionInfo:
    try:
        meta = _read_meta(path)
    except (OSError, ValueError) as exc:
        return VersionInfo(
            version, path, version == active, None, None, None, None, str(exc)
        )
    gate = meta.get("gate")
    return VersionInfo(
        version=version,
        path=path,
        active=version == active,
        created=meta.get("created"),
        model_version=meta.get("version"),
        parent=meta.get("parent"),
        gate=gate if isinstance(gate, dict) else None,
    )


def list_versions(state_dir: Path) -> list[VersionInfo]:
    """The bundled model and every versioned folder, oldest first."""
    try:
        active = active_version(state_dir)
    except ModelsDirError:
        active = ""
    infos = [_info(BUNDLED, default_model_dir(), active)]
    root = models_dir(state_dir)
    if root.is_dir():
        for path in root.iterdir():
            if path.is_dir() and _VERSION_NAME.fullmatch(path.name):
                infos.append(_info(path.name, path, active))
    return sorted(infos, key=lambda i: (i.created or "", i.version))


def show(state_dir: Path, version: str) -> dict[str, Any]:
    """The metadata of *version*, with where it lives and whether it is active."""
    path = version_path(state_dir, version)
    try:
        meta = _read_meta(path)
    except (OSError, ValueError) as exc:
        raise ModelsDirError(f"{path}: {exc}") from None
    meta["path"] = str(path)
    meta["active"] = version == active_version(state_dir)
    return meta


@contextlib.contextmanager
def _pointer_lock(state_dir: Path) -> Iterator[None]:
    root = models_dir(state_dir)
    root.mkdir(parents=True, exist_ok=True)
    with (root / LOCK_FILE).open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _history(state_dir: Path) -> list[str]:
    try:
        text = (models_dir(state_dir) / HISTORY_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [line.strip() for line in text.splitlines() if line.strip()]


def _switch(state_dir: Path, version: str, history: list[str]) -> Model:
    """Check *version*, then record *history* and move the pointer to it."""
    path = version_path(state_dir, version)
    model = Model.load(path)
    if version != BUNDLED and model.version != version:
        raise ModelsDirError(
            f"{path}: meta.json names version {model.version}, not {version}"
        )
    root = models_dir(state_dir)
    _write_atomically(root / HISTORY_FILE, "".join(f"{v}\n" for v in history))
    _write_atomically(root / ACTIVE_FILE, f"{version}\n")
    return model


def activate(state_dir: Path, version: str) -> Model:
    """Make *version* the active model, after checking that it loads."""
    with _pointer_lock(state_dir):
        current = active_version(state_dir)
        history = _history(state_dir) or [current]
        if history[-1] != version:
            history.append(version)
        model = _switch(state_dir, version, history)
    log.info("model %s activated (was %s)", version, current)
    return model


def rollback(state_dir: Path) -> Model:
    """Return to the version that was active before the current one."""
    with _pointer_lock(state_dir):
        current = active_version(state_dir)
        history = _history(state_dir)
        # Normally the current version is the last entry; if a crash left
        # them out of step, cut the history back to where it was current.
        if current in history:
            history = history[: len(history) - history[::-1].index(current) - 1]
        while history and history[-1] == current:
            history.pop()
        if not history:
            raise ModelsDirError(f"no version before {current} to roll back to")
        model = _switch(state_dir, history[-1], history)
    log.info("model rolled back from %s to %s", current, history[-1])
    return model
