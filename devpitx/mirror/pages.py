"""Keeping mirror project pages fresh (mirror.md §4.1, §4.2, §4.5, §9).

Pages are built synchronously from the store (``model/inherit.py``), but
upstream answers arrive asynchronously. So a request first awaits
:meth:`MirrorPages.ensure` for each mirror the whitelist walk would consult;
that step fetches the upstream page when the stored record is expired (or
missing), stores the parsed record if it changed (a journaled write, so
replicas see it; an unchanged page commits nothing) and says how fresh the
answer is:

* ``FRESH``: confirmed by upstream during this request (200 or 304);
* ``STALE``: served from the store without such confirmation (within the
  expiry period, upstream failing or slow, offline mode): the page must not
  be cached by HTTP caches (http-api.md §3.11.4);
* ``ABSENT``: the mirror does not have the project.

When nothing is stored and upstream fails, :class:`MirrorUnavailable`
carries the 502/504 answer.

Staying fast when upstream is slow or down:

* one fetch per (mirror, project) at a time, shared by all waiters
  (``fetches.SingleFlight``); a waiter gives up after ``--request-timeout``
  counted from the start of the fetch, the fetch goes on in the background
  (bounded by a longer timeout) and stores its result when it arrives;
* once a mirror failed or was too slow, requests with something stored get
  the stale copy at once while one background fetch per project retries,
  at most every ``retry_after_failure`` seconds, until upstream answers again.

Freshness times, remembered 404s and the failing flag are per process (after
a restart every record counts as expired, as in the reference).
"""
from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from devpitx.mirror.fetches import SingleFlight
from devpitx.mirror.links import PageFormatError, build_record, empty_record, parse_project_page
from devpitx.mirror.projectlist import ProjectLists
from devpitx.mirror.upstream import MirrorSettings, MirrorUrl, Upstream, UpstreamError
from devpitx.model.indexes import Stage, get_stage
from devpitx.model.ixconfig import cache_expiry_seconds
from devpitx.runtime import RunBlocking
from devpitx.storage.keys import mirrorlinks_key
from devpitx.storage.store import Store

log = Logger()


class Freshness(enum.Enum):
    FRESH = "fresh"
    STALE = "stale"
    ABSENT = "absent"


class MirrorUnavailable(Exception):
    """Upstream failed and nothing is stored: ``code`` (502, or 504 for a timeout) and message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class _Outcome:
    kind: str          # "stored", "not_modified", "not_found", "error"
    message: str = ""
    timed_out: bool = False


@dataclass
class _ProjectState:
    retrieved_at: float | None = None     # last 200/304 by this process
    not_found_at: float | None = None     # last upstream 404 (or "not in the project list")
    attempted_at: float | None = None     # last fetch started


@dataclass
class _MirrorHealth:
    failing_since: float | None = None


# On a replica: ask the primary for the page of (stage, project); fires once the replica has
# applied what the primary committed for it (mirror.md §8), fails with MirrorUnavailable.
ViaPrimary = Callable[[Stage, str], Awaitable[None]]


class MirrorPages:
    def __init__(self, store: Store, upstream: Upstream, lists: ProjectLists, clock: IReactorTime,
                 run_blocking: RunBlocking, settings: MirrorSettings, via_primary: ViaPrimary | None = None) -> None:
        self._via_primary = via_primary
        self._store = store
        self._upstream = upstream
        self._lists = lists
        self._clock = clock
        self._run = run_blocking
        self._settings = settings
        self._projects: dict[tuple[str, str], _ProjectState] = {}
        self._health: dict[str, _MirrorHealth] = {}
        self._flights: SingleFlight[tuple[str, str], _Outcome] = SingleFlight(clock)
        store.add_listener(self._committed)

    # -- state ---------------------------------------------------------------------------------
    def _state(self, stage: Stage, project: str) -> _ProjectState:
        return self._projects.setdefault((stage.name, project), _ProjectState())

    def _mirror_health(self, stage: Stage) -> _MirrorHealth:
        return self._health.setdefault(stage.name, _MirrorHealth())

    def failing(self, stage: Stage) -> bool:
        return self._mirror_health(stage).failing_since is not None

    def _record(self, stage: Stage, project: str) -> Mapping[str, Any] | None:
        record = self._store.get(mirrorlinks_key(stage.user, stage.index, project))
        return record if isinstance(record, Mapping) else None

    def _committed(self, serial: int, changes: Mapping[str, Any]) -> None:
        # A record deleted (project deleted from the mirror, maybe on another node's request)
        # must be fetched again on the next read, not served as "still fresh".
        for key, value in changes.items():
            if key.startswith("mirrorlinks/") and value is None:
                _kind, user, index, project = key.split("/", 3)
                self._projects.pop((f"{user}/{index}", project), None)

    def forget(self, stage: Stage, project: str) -> None:
        self._projects.pop((stage.name, project), None)

    # -- the ensure step -------------------------------------------------------------------------
    async def ensure(self, stage: Stage, project: str) -> Freshness:
        """Bring the stored record of ``project`` in ``stage`` up to date as far as upstream allows."""
        record = self._record(stage, project)
        if self._via_primary is not None:
            return await self._ensure_via_primary(stage, project, record)
        if self._upstream.offline:
            return Freshness.STALE if record is not None else Freshness.ABSENT
        # Looked up without creating: names upstream does not list get no state at all, so
        # requests for arbitrary names cannot grow this process's memory.
        state = self._projects.get((stage.name, project)) or _ProjectState()
        now = self._clock.seconds()
        expiry = cache_expiry_seconds(stage.config, self._settings.default_cache_expiry)
        if record is not None and state.retrieved_at is not None and now - state.retrieved_at < expiry:
            return Freshness.STALE      # mirror.md §4.1 step 3: cached, so not "confirmed now"
        if record is None:
            if state.not_found_at is not None and now - state.not_found_at < expiry:
                return Freshness.ABSENT
            await self._lists.ensure(stage)
            record = self._record(stage, project)       # the world may have moved while we waited
            if record is None and self._lists.has_project(self._store, stage, project) is False:
                # Never ask upstream for names it does not list (private names, typos).
                return Freshness.ABSENT
        flight = self._flights.running((stage.name, project))
        now = self._clock.seconds()
        if record is not None and (self.failing(stage) or (
                flight is not None and now - flight.started_at >= self._settings.request_timeout)):
            # Upstream is down or slow: answer from the store now, retry in the background.
            if flight is None and (state.attempted_at is None
                                   or now - state.attempted_at >= self._settings.retry_after_failure):
                self._start(stage, project)
            return Freshness.STALE
        if flight is None:
            flight = self._start(stage, project)
        limit = self._settings.request_timeout
        timeout = limit if record is None else max(0.0, flight.started_at + limit - now)
        try:
            outcome = await flight.wait(timeout)
        except TimeoutError:
            self._mirror_health(stage).failing_since = self._clock.seconds()
            url = MirrorUrl.parse(str(stage.config.get("mirror_url", ""))).project_url(project)
            log.warn("upstream slow: no answer for {url} after {timeout}s, serving what is stored",
                     url=url, timeout=limit)
            if self._record(stage, project) is not None:
                return Freshness.STALE
            raise MirrorUnavailable(504, f"timeout after {limit:g}s getting {url}") from None
        stored = self._record(stage, project) is not None
        if outcome.kind in ("stored", "not_modified") and stored:
            return Freshness.FRESH
        if outcome.kind == "error" and not stored:
            raise MirrorUnavailable(504 if outcome.timed_out else 502, outcome.message)
        return Freshness.STALE if stored else Freshness.ABSENT

    async def _ensure_via_primary(self, stage: Stage, project: str, record: Mapping[str, Any] | None) -> Freshness:
        """A replica never asks upstream: the primary fetches (and commits), the replica follows."""
        state = self._projects.get((stage.name, project)) or _ProjectState()
        expiry = cache_expiry_seconds(stage.config, self._settings.default_cache_expiry)
        if record is not None and state.retrieved_at is not None and self._clock.seconds() - state.retrieved_at < expiry:
            return Freshness.STALE
        try:
            await self._via_primary(stage, project)    # type: ignore[misc]
        except MirrorUnavailable:
            if record is not None:
                return Freshness.STALE
            raise
        self._state(stage, project).retrieved_at = self._clock.seconds()
        return Freshness.FRESH if self._record(stage, project) is not None else Freshness.ABSENT

    def _start(self, stage: Stage, project: str) -> Any:
        self._state(stage, project).attempted_at = self._clock.seconds()
        return self._flights.join((stage.name, project), lambda: self._fetch(stage, project))

    async def _fetch(self, stage: Stage, project: str) -> _Outcome:
        """The shared work: fetch, parse and store one project page. Reports, never raises."""
        mirror = MirrorUrl.parse(str(stage.config.get("mirror_url", "")))
        url = mirror.project_url(project)
        record = self._record(stage, project)
        etag = record.get("etag") if record is not None and record.get("links") else None
        health = self._mirror_health(stage)
        try:
            page = await self._upstream.fetch_page(url, mirror, timeout=self._settings.background_timeout,
                                                   etag=etag if isinstance(etag, str) else None)
        except UpstreamError as exc:
            health.failing_since = health.failing_since or self._clock.seconds()
            log.warn("upstream error for {index}/{project}: {error}", index=stage.name, project=project,
                     error=exc.message)
            return _Outcome("error", exc.message, timed_out=exc.timed_out)
        state = self._state(stage, project)
        if page.status == 304 and etag is not None:
            health.failing_since = None
            state.retrieved_at = self._clock.seconds()
            return _Outcome("not_modified")
        if page.status == 404:
            health.failing_since = None
            state.not_found_at = self._clock.seconds()
            return _Outcome("not_found")
        if page.status != 200:
            health.failing_since = health.failing_since or self._clock.seconds()
            message = f"error {page.status} getting {url}"
            log.warn("upstream error for {index}/{project}: {error}", index=stage.name, project=project,
                     error=message)
            return _Outcome("error", message)
        health.failing_since = None
        stored_serial = record.get("serial", -1) if record is not None else -1
        serial = page.serial
        if stage.config.get("mirror_ignore_serial_header"):
            serial = -1
        elif isinstance(stored_serial, int) and serial < stored_serial:
            # An out-of-date upstream node (mirror.md §4.5): keep what we have.
            message = f"upstream serial {serial} of {url} is older than the stored {stored_serial}"
            log.warn("{message}", message=message)
            return _Outcome("error", message)
        try:
            links = await self._run(parse_project_page, page.body, page.content_type, page.url, project)
        except PageFormatError as exc:
            message = f"cannot parse {url}: {exc}"
            log.warn("{message}", message=message)
            return _Outcome("error", message)
        current = get_stage(self._store, stage.user, stage.index)
        if current is None or not current.is_mirror or current.config.get("mirror_url") != stage.config.get(
                "mirror_url"):
            return _Outcome("error", f"index {stage.name} changed while fetching {url}")
        new_record = build_record(stage.user, stage.index, links, serial=serial, etag=page.etag)
        with self._store.write() as tx:         # unchanged page: no effective change, no serial
            tx.set(mirrorlinks_key(stage.user, stage.index, project), new_record)
        state = self._state(stage, project)
        state.retrieved_at = self._clock.seconds()
        state.not_found_at = None
        return _Outcome("stored")

    # -- refresh ---------------------------------------------------------------------------------
    async def refresh(self, stage: Stage, project: str) -> None:
        """Forget the stored links of ``project`` and fetch them again (mirror.md §9)."""
        key = mirrorlinks_key(stage.user, stage.index, project)
        if self._store.get(key) is not None:
            with self._store.write() as tx:
                tx.set(key, empty_record())
        self.forget(stage, project)
        try:
            await self.ensure(stage, project)
        except MirrorUnavailable as exc:
            log.warn("refresh of {index}/{project}: {error}", index=stage.name, project=project,
                     error=exc.message)

    def serial(self, stage: Stage, project: str) -> int:
        record = self._record(stage, project)
        serial = record.get("serial") if record is not None else None
        return serial if isinstance(serial, int) else -1
