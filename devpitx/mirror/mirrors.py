"""The mirror indexes of one server: the single object the web areas talk to.

It owns the upstream client, the project lists, the page freshness logic and
the file downloads, and it is the :class:`~devpitx.model.inherit.MirrorSource`
that page builds read mirror data through. Handlers use it in two steps:

1. ``await mirrors.ensure_project(order, project)`` (or ``ensure_lists``):
   upstream I/O for the mirrors the whitelist walk consults, nothing else;
2. the synchronous page build with ``mirrors`` as the walk's source.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from devpitx.mirror.files import MirrorFiles
from devpitx.mirror.pages import Freshness, MirrorPages, MirrorUnavailable, ViaPrimary
from devpitx.mirror.projectlist import ProjectLists
from devpitx.mirror.upstream import MirrorSettings, Upstream
from devpitx.model.indexes import Stage
from devpitx.model.inherit import MirrorProject, Reader, consulted_mirrors, stored_mirror_project
from devpitx.model.names import normalize_project_name
from devpitx.runtime import RunBlocking
from devpitx.storage.store import Store

log = Logger()


@dataclass(frozen=True)
class PageFreshness:
    """What the ensure step found out for one page."""

    stale: bool = False            # some contributing mirror answered from cache (no-cache headers)


class Mirrors:
    def __init__(self, store: Store, http: Any | None, clock: IReactorTime, run_disk: RunBlocking,
                 settings: MirrorSettings, via_primary: ViaPrimary | None = None) -> None:
        self.store = store
        self.settings = settings
        self.upstream = Upstream(http, clock, offline=settings.offline)
        self.lists = ProjectLists(self.upstream, clock, run_disk, settings)
        self.pages = MirrorPages(store, self.upstream, self.lists, clock, run_disk, settings, via_primary)
        # A replica lists files the primary stored even before their content is here: it
        # fetches them from the primary on demand.
        self._content_only = self.upstream.offline and via_primary is None
        self.files = MirrorFiles(store, self.upstream, clock, run_disk, settings)
        store.add_listener(self._committed)

    def _committed(self, serial: int, changes: Mapping[str, Any]) -> None:
        touched = {tuple(key.split("/", 3)[1:3]) for key in changes if key.startswith("mirrorlinks/")}
        for user, index in touched:
            names = self.store.children(f"mirrorlinks/{user}/{index}")
            count = len(names) if isinstance(names, Sized) else sum(1 for _ in names)
            self.lists.local_names_counted(f"{user}/{index}", count)

    # -- MirrorSource: synchronous reads for page builds ------------------------------------------
    def mirror_project(self, view: Reader, mirror: Stage, project: str) -> MirrorProject | None:
        # Offline, only files whose content is here are worth listing (mirror.md §7).
        return stored_mirror_project(view, mirror, project, content_only=self._content_only)

    def mirror_project_names(self, view: Reader, mirror: Stage) -> Iterable[str]:
        return sorted(self.lists.names(view, mirror))

    # -- the async step before a page build -------------------------------------------------------
    async def ensure_project(self, order: Sequence[Stage], project: str) -> PageFreshness:
        """Update the records of ``project`` in every mirror the walk over ``order`` consults.

        An upstream failure of the requested index itself (``order[0]``) with nothing
        stored raises :class:`MirrorUnavailable`; a base mirror's failure only means that
        mirror contributes nothing (model.md §6.2).
        """
        project = normalize_project_name(project)
        mirrors = consulted_mirrors(self.store, order, project)
        if not mirrors:
            return PageFreshness()
        requested = order[0].name if order else None
        answers: list[Freshness | MirrorUnavailable] = await gatherResults(
            [Deferred.fromCoroutine(self._ensure_one(stage, project)) for stage in mirrors],
            consumeErrors=True)
        stale = False
        for stage, answer in zip(mirrors, answers):
            if isinstance(answer, MirrorUnavailable):
                if stage.name == requested:
                    raise answer
                log.warn("base mirror {index} unavailable for {project}: {error}", index=stage.name,
                         project=project, error=answer.message)
            elif answer is Freshness.STALE:
                stale = True
        return PageFreshness(stale=stale)

    async def _ensure_one(self, stage: Stage, project: str) -> Freshness | MirrorUnavailable:
        try:
            return await self.pages.ensure(stage, project)
        except MirrorUnavailable as exc:
            return exc

    async def ensure_lists(self, order: Sequence[Stage]) -> None:
        """Bring the upstream project lists of the mirrors in ``order`` up to date (never raises)."""
        mirrors = [stage for stage in order if stage.is_mirror]
        if mirrors:
            await gatherResults([Deferred.fromCoroutine(self.lists.ensure(stage)) for stage in mirrors],
                                consumeErrors=True)

    def list_generations(self, order: Sequence[Stage]) -> tuple[int, ...]:
        """Part of a project-list page's cache stamp: upstream lists change without commits."""
        return tuple(self.lists.generation(stage) for stage in order if stage.is_mirror)

    async def refresh(self, order: Sequence[Stage], project: str) -> None:
        """``POST +simple/P/refresh``: every mirror in the order forgets and re-fetches P."""
        project = normalize_project_name(project)
        for stage in order:
            if stage.is_mirror:
                await self.pages.refresh(stage, project)

    def upstream_serial(self, stage: Stage, project: str) -> int:
        return self.pages.serial(stage, normalize_project_name(project))
