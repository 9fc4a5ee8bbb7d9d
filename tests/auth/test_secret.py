"""Tests for devpitx.auth.secret: secret file checks, generation, key derivation."""
from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any, Iterator

import argon2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devpitx.auth import secret as secret_module
from devpitx.auth.secret import (
    Argon2Params,
    KeyName,
    SecretError,
    cache_file_name,
    cached_key,
    check_params,
    derive_key,
    derive_key_cached,
    read_child_output,
    read_secret_file,
    remember_key,
    write_new_secret_file,
)

TINY = Argon2Params(memory_cost=8, parallelism=1, time_cost=1)
SECRET = base64.b64encode(bytes(range(100, 132)))


@pytest.fixture
def private_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "private"
    directory.mkdir()
    directory.chmod(0o700)
    return directory


def write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- read_secret_file ----------------------------------------------------------------

def test_good_secret_file(private_dir: Path) -> None:
    path = write(private_dir / "secret", SECRET)
    assert read_secret_file(path) == SECRET


def test_minimum_length_and_variety_accepted(private_dir: Path) -> None:
    data = b"abcdef" * 5 + b"ab"
    assert len(data) == 32 and len(set(data)) == 6
    assert read_secret_file(write(private_dir / "secret", data)) == data


@pytest.mark.parametrize(("name", "create"), [("missing", False), ("adir", True)])
def test_missing_secret_file(private_dir: Path, name: str, create: bool) -> None:
    path = private_dir / name
    if create:
        path.mkdir()
    with pytest.raises(SecretError) as info:
        read_secret_file(path)
    assert str(info.value) == "The given secret file doesn't exist."


@pytest.mark.parametrize(("mode", "message"), [
    (0o644, "The given secret file is world accessible, the access mode must be user "
            "accessible only (0600)."),
    (0o601, "The given secret file is world accessible, the access mode must be user "
            "accessible only (0600)."),
    (0o640, "The given secret file is group accessible, the access mode must be user "
            "accessible only (0600)."),
    (0o610, "The given secret file is group accessible, the access mode must be user "
            "accessible only (0600)."),
])
def test_loose_file_mode(private_dir: Path, mode: int, message: str) -> None:
    path = write(private_dir / "secret", SECRET, mode)
    with pytest.raises(SecretError) as info:
        read_secret_file(path)
    assert str(info.value) == message


def test_read_only_file_is_fine(private_dir: Path) -> None:
    assert read_secret_file(write(private_dir / "secret", SECRET, 0o400)) == SECRET


@pytest.mark.parametrize(("dir_mode", "message"), [
    (0o770, "The folder of the given secret file is group writable, it must only be "
            "writable by the user."),
    (0o703, "The folder of the given secret file is world writable, it must only be "
            "writable by the user."),
])
def test_loose_directory_mode(private_dir: Path, dir_mode: int, message: str) -> None:
    path = write(private_dir / "secret", SECRET)
    private_dir.chmod(dir_mode)
    with pytest.raises(SecretError) as info:
        read_secret_file(path)
    assert str(info.value) == message


def test_readable_directory_is_fine(private_dir: Path) -> None:
    path = write(private_dir / "secret", SECRET)
    private_dir.chmod(0o755)
    assert read_secret_file(path) == SECRET


def test_relative_path_checks_the_working_directory(private_dir: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    write(private_dir / "secret", SECRET)
    private_dir.chmod(0o777)
    monkeypatch.chdir(private_dir)
    with pytest.raises(SecretError, match="world writable|group writable"):
        read_secret_file(Path("secret"))


def test_too_short(private_dir: Path) -> None:
    path = write(private_dir / "secret", SECRET[:31])
    with pytest.raises(SecretError) as info:
        read_secret_file(path)
    assert str(info.value) == ("The secret in the given secret file is too short, it should "
                               "be at least 32 characters long.")


def test_too_weak(private_dir: Path) -> None:
    path = write(private_dir / "secret", b"abcde" * 10)
    with pytest.raises(SecretError) as info:
        read_secret_file(path)
    assert str(info.value) == ("The secret in the given secret file is too weak, it should "
                               "use less repetition.")


# --- write_new_secret_file -------------------------------------------------------------

@pytest.fixture
def no_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_new_secret_file(private_dir: Path, no_umask: None,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    seen_modes: list[int] = []
    real_link = os.link

    def watching_link(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        seen_modes.append(mode_of(Path(src)))     # the file before it becomes visible
        real_link(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "link", watching_link)
    path = private_dir / "secret"
    write_new_secret_file(path)
    assert seen_modes == [0o600]
    assert mode_of(path) == 0o600
    content = path.read_bytes()
    assert len(base64.b64decode(content, validate=True)) == 32
    assert read_secret_file(path) == content
    assert sorted(p.name for p in private_dir.iterdir()) == ["secret"]   # no temp left


def test_new_secrets_differ(private_dir: Path) -> None:
    write_new_secret_file(private_dir / "a")
    write_new_secret_file(private_dir / "b")
    assert (private_dir / "a").read_bytes() != (private_dir / "b").read_bytes()


def test_existing_secret_is_never_replaced(private_dir: Path) -> None:
    path = write(private_dir / "secret", SECRET)
    with pytest.raises(FileExistsError):
        write_new_secret_file(path)
    assert path.read_bytes() == SECRET
    assert sorted(p.name for p in private_dir.iterdir()) == ["secret"]


# --- key derivation ---------------------------------------------------------------------

def test_reference_parameters() -> None:
    assert Argon2Params() == Argon2Params(memory_cost=524288, parallelism=8, time_cost=16)


def reference_key(secret: bytes, salt: bytes, params: Argon2Params) -> bytes:
    return argon2.low_level.hash_secret_raw(
        secret, salt, time_cost=params.time_cost, memory_cost=params.memory_cost,
        parallelism=params.parallelism, hash_len=16, type=argon2.low_level.Type.ID,
        version=0x13)


def test_derive_key() -> None:
    auth_key = derive_key(SECRET, TINY, KeyName.AUTH)
    replica_key = derive_key(SECRET, TINY, KeyName.REPLICA)
    assert auth_key == reference_key(SECRET, b"devpi-server-auth", TINY)
    assert replica_key == reference_key(SECRET, b"devpi-server-replica", TINY)
    assert len(auth_key) == len(replica_key) == 16
    assert auth_key != replica_key


def test_derive_key_depends_on_secret_and_params() -> None:
    key = derive_key(SECRET, TINY, KeyName.AUTH)
    assert derive_key(SECRET + b"x", TINY, KeyName.AUTH) != key
    assert derive_key(SECRET, Argon2Params(memory_cost=16, parallelism=1, time_cost=1), KeyName.AUTH) != key


BAD_PARAMS = [
    Argon2Params(memory_cost=8, parallelism=2, time_cost=1),    # memory < 8 * parallelism
    Argon2Params(memory_cost=8, parallelism=1, time_cost=0),
    Argon2Params(memory_cost=-1, parallelism=1, time_cost=1),
    Argon2Params(memory_cost=8, parallelism=0, time_cost=1),
    Argon2Params(memory_cost=2**32, parallelism=1, time_cost=1),
    Argon2Params(memory_cost=8, parallelism=1, time_cost=2**32),
]


@pytest.mark.parametrize("params", BAD_PARAMS)
def test_derive_key_bad_params(params: Argon2Params) -> None:
    with pytest.raises(SecretError, match="argon2"):
        derive_key(SECRET, params, KeyName.AUTH)
    with pytest.raises(SecretError, match="argon2"):
        check_params(params)


@settings(max_examples=60, deadline=None)
@given(memory_cost=st.integers(-2, 40), parallelism=st.integers(-1, 5), time_cost=st.integers(-1, 2))
def test_check_params_agrees_with_argon2(memory_cost: int, parallelism: int, time_cost: int) -> None:
    """check_params refuses at start-up exactly what the derivation would refuse later."""
    params = Argon2Params(memory_cost=memory_cost, parallelism=parallelism, time_cost=time_cost)
    try:
        derive_key(SECRET, params, KeyName.AUTH)
    except SecretError:
        with pytest.raises(SecretError):
            check_params(params)
    else:
        check_params(params)


class ChildCounter:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.commands: list[list[str]] = []
        self.inputs: list[bytes] = []
        real_run = subprocess.run

        def counting_run(args: list[str], **kwargs: Any) -> Any:
            self.commands.append(list(args))
            self.inputs.append(kwargs.get("input", b""))
            return real_run(args, **kwargs)

        monkeypatch.setattr(subprocess, "run", counting_run)


@pytest.mark.parametrize("name", list(KeyName))
def test_cached_derivation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: KeyName) -> None:
    children = ChildCounter(monkeypatch)
    cache_dir = tmp_path / "cache" / "nested"       # created on demand
    key = derive_key_cached(SECRET, TINY, name, cache_dir)
    assert key == derive_key(SECRET, TINY, name)
    assert len(children.commands) == 1
    command = children.commands[0]
    assert command[1:5] == ["-P", "-m", "devpitx.auth.secret", name.value]
    assert not any(SECRET.decode() in arg for arg in command)   # secret only on stdin
    assert children.inputs == [SECRET]

    cache_file = cache_dir / cache_file_name(name)
    assert mode_of(cache_file) == 0o600
    stored = cache_file.read_bytes()
    for form in (SECRET, base64.b64decode(SECRET).hex().encode(), SECRET.hex().encode()):
        assert form not in stored
    assert sorted(p.name for p in cache_dir.iterdir()) == [cache_file_name(name)]   # no temp left

    assert cached_key(SECRET, TINY, name, cache_dir) == key     # a hit, without a child
    assert derive_key_cached(SECRET, TINY, name, cache_dir) == key
    assert len(children.commands) == 1


def test_keys_are_cached_separately(tmp_path: Path) -> None:
    derive_key_cached(SECRET, TINY, KeyName.REPLICA, tmp_path)
    assert cached_key(SECRET, TINY, KeyName.AUTH, tmp_path) is None
    remember_key(SECRET, TINY, KeyName.AUTH, tmp_path, b"a" * 16)
    assert cached_key(SECRET, TINY, KeyName.AUTH, tmp_path) == b"a" * 16
    assert cached_key(SECRET, TINY, KeyName.REPLICA, tmp_path) == derive_key(SECRET, TINY, KeyName.REPLICA)


def test_cache_entry_is_for_one_key_only(tmp_path: Path) -> None:
    """An auth key's entry copied over the replica key's file is not taken for the replica key."""
    remember_key(SECRET, TINY, KeyName.AUTH, tmp_path, b"a" * 16)
    shutil.copy(tmp_path / cache_file_name(KeyName.AUTH), tmp_path / cache_file_name(KeyName.REPLICA))
    assert cached_key(SECRET, TINY, KeyName.REPLICA, tmp_path) is None


def test_cache_misses_for_other_secret_or_params(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    children = ChildCounter(monkeypatch)
    derive_key_cached(SECRET, TINY, KeyName.AUTH, tmp_path)
    other_params = Argon2Params(memory_cost=16, parallelism=1, time_cost=1)
    assert cached_key(SECRET, other_params, KeyName.AUTH, tmp_path) is None
    assert derive_key_cached(SECRET, other_params, KeyName.AUTH, tmp_path) == \
        derive_key(SECRET, other_params, KeyName.AUTH)
    other_secret = SECRET[::-1]
    assert cached_key(other_secret, other_params, KeyName.AUTH, tmp_path) is None
    assert derive_key_cached(other_secret, other_params, KeyName.AUTH, tmp_path) == \
        derive_key(other_secret, other_params, KeyName.AUTH)
    assert len(children.commands) == 3


def test_cache_is_read_without_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    children = ChildCounter(monkeypatch)
    remember_key(SECRET, TINY, KeyName.REPLICA, tmp_path, b"r" * 16)
    assert derive_key_cached(SECRET, TINY, KeyName.REPLICA, tmp_path) == b"r" * 16
    assert children.commands == []


def cache_entry(name: KeyName, **changes: Any) -> bytes:
    entry = {"format": 2, "key_name": name.value,
             "fingerprint": secret_module._fingerprint(SECRET, TINY, name), "key": "61" * 16}
    entry.update(changes)
    return json.dumps(entry).encode()


def test_cache_entry_format(tmp_path: Path) -> None:
    """The damage cases below differ from this good entry in one field each."""
    write(tmp_path / cache_file_name(KeyName.AUTH), cache_entry(KeyName.AUTH))
    assert cached_key(SECRET, TINY, KeyName.AUTH, tmp_path) == b"a" * 16


@pytest.mark.parametrize("damage", [
    b"", b"not json", b"[]", b'{"format": 2}',
    cache_entry(KeyName.AUTH, format=1),                # an older format just misses
    cache_entry(KeyName.AUTH, key_name="replica"),
    cache_entry(KeyName.AUTH, fingerprint="x"),
    cache_entry(KeyName.AUTH, key="zz"),
    cache_entry(KeyName.AUTH, key="61" * 15),           # wrong length
    cache_entry(KeyName.AUTH, key=None),
])
def test_damaged_cache_is_recomputed(tmp_path: Path, damage: bytes) -> None:
    cache_file = write(tmp_path / cache_file_name(KeyName.AUTH), damage)    # 0600: only the content is wrong
    assert cached_key(SECRET, TINY, KeyName.AUTH, tmp_path) is None
    assert derive_key_cached(SECRET, TINY, KeyName.AUTH, tmp_path) == derive_key(SECRET, TINY, KeyName.AUTH)
    assert json.loads(cache_file.read_bytes())["format"] == 2


def test_old_cache_file_is_ignored_and_removed(tmp_path: Path) -> None:
    old = write(tmp_path / "derived-keys.json", json.dumps({
        "format": 1, "fingerprint": "x", "auth_key": "61" * 16, "replica_key": "72" * 16}).encode())
    assert derive_key_cached(SECRET, TINY, KeyName.REPLICA, tmp_path) == \
        derive_key(SECRET, TINY, KeyName.REPLICA)
    assert not old.exists()     # it held keys: not left behind


def test_loosened_cache_file_is_not_trusted(tmp_path: Path) -> None:
    remember_key(SECRET, TINY, KeyName.AUTH, tmp_path, b"a" * 16)
    cache_file = tmp_path / cache_file_name(KeyName.AUTH)
    cache_file.chmod(0o644)
    assert cached_key(SECRET, TINY, KeyName.AUTH, tmp_path) is None
    key = derive_key_cached(SECRET, TINY, KeyName.AUTH, tmp_path)
    assert key == derive_key(SECRET, TINY, KeyName.AUTH) != b"a" * 16
    assert mode_of(cache_file) == 0o600


def test_unwritable_cache_dir_still_gives_keys(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    assert derive_key_cached(SECRET, TINY, KeyName.AUTH, blocker / "cache") == \
        derive_key(SECRET, TINY, KeyName.AUTH)


def test_child_failure_is_a_secret_error(tmp_path: Path) -> None:
    bad = Argon2Params(memory_cost=8, parallelism=4, time_cost=1)
    with pytest.raises(SecretError, match="argon2"):
        derive_key_cached(SECRET, bad, KeyName.AUTH, tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("exit_status", "stdout", "stderr", "message"), [
    (1, b"", b"Traceback\nMemoryError: out of memory\n", "MemoryError: out of memory"),
    (-9, b"", b"", "key derivation was killed by signal 9"),
    (3, b"", b"", "key derivation failed with exit status 3"),
    (0, b"garbage", b"", "unreadable output"),
    (0, b'{"key": "00"}', b"", "key of 1 bytes"),
])
def test_child_output_problems(exit_status: int, stdout: bytes, stderr: bytes, message: str) -> None:
    with pytest.raises(SecretError, match=message):
        read_child_output(exit_status, stdout, stderr)


def test_child_imports_the_servers_code_not_the_working_directorys(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    impostor = tmp_path / "devpitx" / "auth"
    impostor.mkdir(parents=True)
    for package in (impostor.parent, impostor):
        (package / "__init__.py").write_text("")
    (impostor / "secret.py").write_text('import json\nprint(json.dumps({"key": "00" * 16}))\n')
    monkeypatch.chdir(tmp_path)
    assert derive_key_cached(SECRET, TINY, KeyName.AUTH, tmp_path / "cache") == \
        derive_key(SECRET, TINY, KeyName.AUTH)


def test_child_entry_point_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert secret_module._main(["auth", "8", "1"]) == 2
    assert secret_module._main(["auth", "8", "1", "x"]) == 2
    assert secret_module._main(["other", "8", "1", "1"]) == 2
    assert "usage" in capsys.readouterr().err
