"""runtime: the heap freezer's schedule."""
from __future__ import annotations

import gc

from twisted.internet.task import Clock

from devpitx.runtime import HeapFreezer


def test_freezes_only_when_state_changed_and_stops_with_the_service() -> None:
    clock = Clock()
    changes = iter([False, True, False])
    freezer = HeapFreezer(clock, lambda: next(changes), interval_seconds=10)
    frozen_before = gc.get_freeze_count()
    try:
        freezer.startService()
        kept = [{"long": "lived"} for _ in range(100)]
        clock.advance(10)  # no change: nothing frozen
        assert gc.get_freeze_count() == frozen_before
        clock.advance(10)  # changed: the live objects (kept among them) move to the permanent generation
        assert gc.get_freeze_count() >= frozen_before + len(kept)
        frozen = gc.get_freeze_count()
        clock.advance(10)
        assert gc.get_freeze_count() == frozen
        freezer.stopService()
        assert clock.getDelayedCalls() == []
    finally:
        gc.unfreeze()
