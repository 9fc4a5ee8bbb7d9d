"""The full project list of each mirror (mirror.md §2, §3), kept in memory only.

The list answers "does upstream have project P?" before a project page is
requested, so names upstream does not list (private names, typos) are never
sent there. It is fetched once per ``mirror_cache_expiry``, revalidated with
its ETag, one fetch per mirror at a time, and parsed in a worker thread (a
large index lists hundreds of thousands of names).

When upstream fails, the last list stays in use; without one, the names
known locally (projects with a stored link record) stand in. After a failure
the list is not asked for again for a short while, so a dead upstream does
not cost every request a timeout. ``mirror_no_project_list`` mirrors and
offline mode never fetch it: their list is the locally known names.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit

from twisted.internet.defer import TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from devpitx.mirror.fetches import SingleFlight
from devpitx.mirror.links import PageFormatError, parse_anchors
from devpitx.mirror.upstream import (
    MAX_LIST_BYTES, SIMPLE_JSON_TYPE, MirrorSettings, MirrorUrl, Upstream, UpstreamError,
)
from devpitx.model.indexes import Stage
from devpitx.model.ixconfig import cache_expiry_seconds
from devpitx.model.names import normalize_project_name
from devpitx.runtime import RunBlocking

log = Logger()


class Reader(Protocol):
    def get(self, key: str) -> Any | None: ...
    def children(self, prefix: str) -> Iterable[str]: ...


def parse_project_list(body: bytes, content_type: str, list_url: str) -> frozenset[str]:
    """Normalized project names of an upstream root page (mirror.md §2.2)."""
    if content_type == SIMPLE_JSON_TYPE:
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise PageFormatError(f"invalid JSON project list: {exc}") from None
        if not isinstance(data, Mapping):
            raise PageFormatError("JSON project list is not an object")
        meta = data.get("meta")
        version = str(meta.get("api-version", "1.0")) if isinstance(meta, Mapping) else "1.0"
        if version.split(".", 1)[0] != "1":
            raise PageFormatError(f"unsupported simple API version {version!r}")
        return frozenset(normalize_project_name(item["name"]) for item in data.get("projects") or ()
                         if isinstance(item, Mapping) and isinstance(item.get("name"), str) and item["name"])
    base = urlsplit(list_url)
    names = set()
    for attrs, text in parse_anchors(body).anchors:
        href = (attrs.get("href") or "").strip()
        if not href:
            continue
        if "://" in href:
            target = urlsplit(href)
            if (target.scheme not in ("http", "https") or target.hostname != base.hostname
                    or not target.path.startswith(base.path)):
                continue
            candidate = _last_segment(target.path)
        else:
            candidate = _last_segment(urlsplit(urljoin(list_url, href)).path)
        label = "".join(text).strip()
        name = label or candidate
        if name:
            names.add(normalize_project_name(name))
    return frozenset(names)


def _last_segment(path: str) -> str:
    segments = [segment for segment in path.split("/") if segment]
    return segments[-1] if segments else ""


@dataclass
class _ListState:
    mirror_url: str
    names: frozenset[str] | None = None
    etag: str | None = None
    fetched_at: float | None = None      # last 200 or 304, by this process
    failed_at: float | None = None
    generation: int = 0


def local_names(view: Reader, stage: Stage) -> set[str]:
    """Projects this mirror has a stored link record for (mirror.md §2.4)."""
    return set(view.children(f"mirrorlinks/{stage.user}/{stage.index}"))


class ProjectLists:
    def __init__(self, upstream: Upstream, clock: IReactorTime, run_blocking: RunBlocking,
                 settings: MirrorSettings) -> None:
        self._upstream = upstream
        self._clock = clock
        self._run = run_blocking
        self._settings = settings
        self._lists: dict[str, _ListState] = {}
        self._flights: SingleFlight[str, None] = SingleFlight(clock)
        self._local_counts: dict[str, int] = {}
        self._local_generation: dict[str, int] = {}

    def _state(self, stage: Stage) -> _ListState:
        url = str(stage.config.get("mirror_url") or "")
        state = self._lists.get(stage.name)
        if state is None or state.mirror_url != url:
            # A new or re-pointed mirror: what we knew about the old upstream no longer holds.
            previous = state.generation if state is not None else 0
            state = self._lists[stage.name] = _ListState(url, generation=previous + 1)
        return state

    def _uses_list(self, stage: Stage) -> bool:
        return not self._upstream.offline and not stage.config.get("mirror_no_project_list")

    def _due(self, stage: Stage, state: _ListState) -> bool:
        now = self._clock.seconds()
        expiry = cache_expiry_seconds(stage.config, self._settings.default_cache_expiry)
        if state.fetched_at is not None and now - state.fetched_at < expiry:
            return False
        return state.failed_at is None or now - state.failed_at >= self._settings.retry_after_failure

    async def ensure(self, stage: Stage) -> None:
        """Make the upstream list current if it is due; never raises (failures mean a stale list).

        Waits at most ``--request-timeout`` when a list is already known, and up
        to the project-list timeout for the very first one (without it every
        project would look unknown).
        """
        if not self._uses_list(stage):
            return
        state = self._state(stage)
        flight = self._flights.running(stage.name)
        if flight is None:
            if not self._due(stage, state):
                return
            flight = self._flights.join(stage.name, lambda: self._fetch(stage, state))
        # Measured from the start of the fetch: once one request gave up on it, later ones
        # do not wait for the same slow fetch again.
        limit = self._settings.request_timeout if state.names is not None else self._settings.list_timeout
        timeout = max(0.0, flight.started_at + limit - self._clock.seconds())
        try:
            await flight.wait(timeout)
        except TimeoutError:
            log.warn("project list of {index} not ready after {timeout}s: using what is known",
                     index=stage.name, timeout=timeout)

    async def _fetch(self, stage: Stage, state: _ListState) -> None:
        mirror = MirrorUrl.parse(state.mirror_url)
        now = self._clock.seconds()
        try:
            page = await self._upstream.fetch_page(mirror.url, mirror, timeout=self._settings.list_timeout,
                                                   etag=state.etag, max_bytes=MAX_LIST_BYTES)
            if page.status == 304 and state.names is not None:
                state.fetched_at = self._clock.seconds()
                state.etag = page.etag or state.etag
                state.failed_at = None
                return
            if page.status != 200:
                raise UpstreamError(f"error {page.status} getting {mirror.url}", url=mirror.url)
            names = await self._run(parse_project_list, page.body, page.content_type, page.url)
        except (UpstreamError, PageFormatError) as exc:
            state.failed_at = now
            log.warn("upstream error ({error}): using the stale project list of {index}",
                     error=str(exc), index=stage.name)
            return
        if names != state.names:
            state.generation += 1
        state.names = names
        state.etag = page.etag
        state.fetched_at = self._clock.seconds()
        state.failed_at = None
        log.info("project list of {index}: {count} names", index=stage.name, count=len(names))

    # -- synchronous reads after ensure() ----------------------------------------------------
    def names(self, view: Reader, stage: Stage) -> set[str]:
        """Normalized names the mirror lists: upstream's (if in use) plus the locally known."""
        found = local_names(view, stage)
        if self._uses_list(stage):
            upstream = self._state(stage).names
            if upstream is not None:
                found |= upstream
        return found

    def has_project(self, view: Reader, stage: Stage, project: str) -> bool | None:
        """mirror.md §2.3 for a project without a stored record; None is "unknown" (§3)."""
        if project in local_names(view, stage):
            return True
        if not self._uses_list(stage):
            return None if not self._upstream.offline else False
        upstream = self._state(stage).names
        return upstream is not None and project in upstream

    def generation(self, stage: Stage) -> int:
        """Changes whenever the names this mirror lists change (page cache stamps)."""
        return self._state(stage).generation + self._local_generation.get(stage.name, 0)

    def local_names_counted(self, index_name: str, count: int) -> None:
        """After a commit touching ``index_name``'s link records: the number of locally known
        names. A change of it (a record created or deleted) changes the list; updates of
        existing records do not, so a huge list page is not re-rendered for each of them."""
        if self._local_counts.get(index_name) != count:
            self._local_counts[index_name] = count
            self._local_generation[index_name] = self._local_generation.get(index_name, 0) + 1
