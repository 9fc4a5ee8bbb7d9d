"""The store against a dict model: random writes, commits, failed commits, reopens and rebuilds.

Invariants after every step: the store holds exactly the model's values,
``children()`` equals the model's, the serial counts the commits that changed
something (a commit that changes nothing consumes no serial), and ``+files/``
holds one link per live file entry.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from twisted.internet.task import Clock

from devpitx.storage.store import COMMIT_STEPS, Store, StoreBroken
from tests.storage.test_crash import assert_links_match, assert_same_values

# Nested keys where one key can be the prefix of another ("x/a" and "x/a/b").
keys = st.lists(st.sampled_from(["a", "b", "c"]), min_size=0, max_size=2).flatmap(
    lambda rest: st.sampled_from(["x", "y"]).map(lambda top: "/".join([top, *rest]))
)
scalars = st.none() | st.booleans() | st.integers(-2, 2) | st.sampled_from([1.0, 0.5]) | st.text("ab", max_size=2)
values = st.dictionaries(
    st.sampled_from(["k", "l"]),
    st.recursive(scalars, lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.sampled_from(["k"]), inner)),
    max_size=2,
) | st.booleans() | st.integers(0, 1) | st.lists(scalars, max_size=2)
relpaths = st.sampled_from(["u/i/+f/aaa/bbb/p-1.zip", "u/i/+f/aaa/ccc/p-2.zip", "u/j/+f/ddd/eee/q-1.whl"])
contents = st.sampled_from([b"one", b"two", b"three"])
file_states = st.sampled_from(["live", "no-content", "deleted"])


def canonical(value: Any) -> str:
    # Key order is not a change; the JSON type of a value is.
    return json.dumps(value, sort_keys=True)


def children_in(keys: Iterable[str], prefix: str) -> set[str]:
    below = prefix + "/"
    return {key[len(below):].split("/", 1)[0] for key in keys if key.startswith(below)}


def prefixes_of(keys: Iterable[str]) -> set[str]:
    found = {"x", "y", "x/a", "y/b", "file", "file/u"}
    for key in keys:
        parts = key.split("/")
        found.update("/".join(parts[:n]) for n in range(1, len(parts) + 1))
    return found


@pytest.fixture(autouse=True)
def no_disk_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    # Failures here are exceptions in this process, which cannot lose what reached
    # the kernel: flushing to the disk would only make every example slow.
    monkeypatch.setattr(os, "fsync", lambda fd: None)


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.serverdir = Path(tempfile.mkdtemp(prefix="devpitx-statemachine-"))
        self.fail_at: str | None = None
        self.model: dict[str, Any] = {}
        self.pending: dict[str, Any] = {}  # the next transaction: key -> value, None to delete
        self.effective_commits = 0
        self.store = self.open()

    def open(self) -> Store:
        return Store.open(self.serverdir, Clock(), checkpoint=self.checkpoint)

    def checkpoint(self, step: str) -> None:
        if step == self.fail_at:
            self.fail_at = None
            raise OSError(errno.EIO, "injected failure")

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.serverdir)

    def model_after_pending(self) -> tuple[dict[str, Any], bool]:
        after = dict(self.model)
        changed = False
        for key, value in self.pending.items():
            if canonical(value) == canonical(after.get(key)):
                continue  # equal values (or deleting what is absent) are not changes
            changed = True
            if value is None:
                del after[key]
            else:
                after[key] = value
        return after, changed

    def run_transaction(self) -> None:
        expected, _changed = self.model_after_pending()
        with self.store.write() as tx:
            for key, value in self.pending.items():
                if value is None:
                    tx.delete(key)
                else:
                    tx.set(key, value)
            for prefix in prefixes_of([*self.model, *self.pending]):
                assert tx.children(prefix) == children_in(expected, prefix), prefix

    # -- rules ------------------------------------------------------------------------------
    @rule(key=keys, value=values)
    def set_key(self, key: str, value: Any) -> None:
        self.pending[key] = value

    @rule(key=keys)
    def delete_key(self, key: str) -> None:
        self.pending[key] = None

    @rule(relpath=relpaths, content=contents, state=file_states, metadata=st.none() | contents)
    def set_file(self, relpath: str, content: bytes, state: str, metadata: bytes | None) -> None:
        sha256 = self.store.blobs.put_bytes(content)
        assert sha256 == hashlib.sha256(content).hexdigest()
        entry: dict[str, Any] = {"hashes": {"sha256": sha256}}
        if metadata is not None:
            entry["+core_metadata"] = {"sha256": self.store.blobs.put_bytes(metadata)}
        if state == "live":
            entry["last_modified"] = "Mon, 01 Jan 2024 00:00:00 GMT"
        elif state == "deleted":
            entry = {}
        self.pending[f"file/{relpath}"] = entry

    @rule()
    def commit(self) -> None:
        after, changed = self.model_after_pending()
        self.run_transaction()
        self.model, self.pending = after, {}
        self.effective_commits += changed

    @rule(step=st.sampled_from(COMMIT_STEPS))
    def commit_with_failure(self, step: str) -> None:
        after, changed = self.model_after_pending()
        self.fail_at = step
        try:
            self.run_transaction()
        except StoreBroken:
            # The entry was published: it counts, and only a reopen makes the store writable again.
            assert changed and step != "before-journal"
            self.model = after
            self.effective_commits += 1
            self.store.close()
            self.store = self.open()
        except OSError as exc:
            assert changed and step == "before-journal" and exc.strerror == "injected failure"
        else:
            assert not changed  # nothing to commit, so no step was reached
        self.fail_at = None
        self.pending = {}

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self.store = self.open()

    @rule()
    def rebuild_from_journal(self) -> None:
        self.store.close()
        shutil.rmtree(self.serverdir / "state")
        shutil.rmtree(self.serverdir / "+files", ignore_errors=True)
        self.store = self.open()

    # -- invariants -------------------------------------------------------------------------
    @invariant()
    def store_equals_model(self) -> None:
        assert_same_values(dict(self.store.state.items()), self.model)

    @invariant()
    def children_equal_the_models(self) -> None:
        for prefix in prefixes_of(self.model):
            assert set(self.store.children(prefix)) == children_in(self.model, prefix), prefix
            assert set(self.store.keys_below(prefix)) == {k for k in self.model if k.startswith(prefix + "/")}

    @invariant()
    def serial_counts_effective_commits(self) -> None:
        assert self.store.serial == self.effective_commits - 1
        assert self.store.journal.last_serial == self.store.serial

    @invariant()
    def files_links_match_live_entries(self) -> None:
        assert_links_match(self.serverdir, self.model)


TestStoreMachine = StoreMachine.TestCase
TestStoreMachine.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
