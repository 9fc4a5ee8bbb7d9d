"""StateFlusher: writes ``state/`` and ``+files/`` after the journal, inline or in its own thread.

The journal entry is the commit; the key files under ``state/`` only make the
next start cheaper and ``+files/`` only serve front-end web servers. So the
server hands finished commits to a dedicated thread that writes them in
coalesced batches (a key changed by ten commits in a row is written once)
and records ``state/.serial`` after each batch. A crash loses nothing: on the
next open every entry after ``state/.serial`` is replayed, which rewrites
every key the interrupted batch could have touched.

Inline mode (tests, recovery, admin commands) writes each batch before
``submit`` returns, so the directory is always fully up to date.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

WriteBatch = Callable[[dict[str, Any], int], None]
RETRY_SECONDS = 1.0


class StateFlusher:
    log = Logger()

    def __init__(self, write_batch: WriteBatch, *, threaded: bool) -> None:
        self._write_batch = write_batch
        self._threaded = threaded
        self._cond = threading.Condition()
        self._pending: dict[str, Any] = {}
        self._pending_serial: int | None = None
        self._jobs: list[Callable[[], None]] = []
        self._busy = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._run, name="devpitx-state-flusher", daemon=True)
            self._thread.start()

    def submit(self, changes: dict[str, Any], serial: int) -> None:
        """Queue the changes of committed ``serial`` (reactor thread)."""
        if not self._threaded:
            self._write_batch(changes, serial)
            return
        with self._cond:
            self._pending.update(changes)
            self._pending_serial = serial
            self._cond.notify()

    def submit_job(self, job: Callable[[], None]) -> None:
        """Run ``job`` after the batches queued before it (snapshots)."""
        if not self._threaded:
            job()
            return
        with self._cond:
            self._jobs.append(job)
            self._cond.notify()

    def drain(self) -> None:
        """Block until everything submitted so far is on disk (or has failed and been logged)."""
        if not self._threaded:
            return
        with self._cond:
            while (self._pending or self._jobs or self._busy) and self._thread_alive():
                self._cond.wait(0.1)

    def stop(self) -> None:
        self.drain()
        if self._thread is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()
        self._thread = None

    def _thread_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._pending or self._jobs or self._stopping):
                    self._cond.wait()
                if self._stopping and not (self._pending or self._jobs):
                    return
                batch, serial = self._pending, self._pending_serial
                jobs, self._jobs = self._jobs, []
                self._pending, self._pending_serial = {}, None
                self._busy = True
            try:
                if batch and serial is not None:
                    self._write_batch(batch, serial)
                for job in jobs:
                    job()
                failed = False
            except Exception:
                self.log.failure("writing state files up to serial {serial} failed; will retry", serial=serial)
                failed = True
                with self._cond:
                    # Keep the batch: later changes to the same keys win when merged back.
                    self._pending = {**batch, **self._pending}
                    if self._pending_serial is None:
                        self._pending_serial = serial
            with self._cond:
                self._busy = False
                self._cond.notify_all()
                if failed:
                    if self._stopping:
                        return  # replay on the next open rewrites what could not be written
                    self._cond.wait(RETRY_SECONDS)
