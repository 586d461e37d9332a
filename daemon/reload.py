"""Watch the models directory and ask the daemon to reload when it changes.

watchdog reports file events from its own thread; the watcher only hands
a request to the event loop (``call_soon_threadsafe``), where the daemon
checks the new model aside and swaps it in between messages, exactly as
on SIGHUP. Several events in a burst (a temp file written, renamed) give
one reload.

Only events that can change the pointer count. inotify also reports every
open and every read-only close, and a reload itself reads the pointer: were
those taken for changes, each reload would start the next one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from watchdog.events import (
    EVENT_TYPE_CLOSED,
    EVENT_TYPE_CREATED,
    EVENT_TYPE_DELETED,
    EVENT_TYPE_MODIFIED,
    EVENT_TYPE_MOVED,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

__all__ = ["ModelWatcher"]

log = logging.getLogger(__name__)

POINTER = "active"
# The events that can change a file's content or name; not "opened" nor
# "closed_no_write" (someone read it).
CHANGES = frozenset(
    {
        EVENT_TYPE_CREATED,
        EVENT_TYPE_MODIFIED,
        EVENT_TYPE_MOVED,
        EVENT_TYPE_DELETED,
        EVENT_TYPE_CLOSED,
    }
)


class _Handler(FileSystemEventHandler):
    def __init__(self, notify: Callable[[], None]) -> None:
        self._notify = notify

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in CHANGES:
            return
        paths = {str(event.src_path), str(getattr(event, "dest_path", "") or "")}
        if any(Path(p).name == POINTER for p in paths if p):
            self._notify()


class ModelWatcher:
    """Calls *on_change* in the event loop when ``models/active`` changes."""

    def __init__(self, models_dir: Path, on_change: Callable[[], None]) -> None:
        self.models_dir = models_dir
        self._on_change = on_change
        self._observer: Observer | None = None  # type: ignore[valid-type]  # untyped library
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self._loop = asyncio.get_running_loop()
        observer = Observer()
        observer.schedule(
            _Handler(self._from_thread), str(self.models_dir), recursive=False
        )
        observer.daemon = True
        observer.start()
        self._observer = observer
        log.info("watching %s for model changes", self.models_dir)

    def _from_thread(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._on_change)

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
