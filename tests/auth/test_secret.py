"""Tests for devpitx.auth.secret: secret file checks, generation, key derivation."""
from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any, Iterator

import argon2
import pytest

from devpitx.auth import secret as secret_module
from devpitx.auth.secret import (
    CACHE_FILE_NAME,
    Argon2Params,
    DerivedKeys,
    SecretError,
    derive_keys,
    derive_keys_cached,
    read_secret_file,
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


def test_derive_keys() -> None:
    keys = derive_keys(SECRET, TINY)
    assert keys.auth_key == reference_key(SECRET, b"devpi-server-auth", TINY)
    assert keys.replica_key == reference_key(SECRET, b"devpi-server-replica", TINY)
    assert len(keys.auth_key) == len(keys.replica_key) == 16
    assert keys.auth_key != keys.replica_key
    assert keys.auth_key.hex() not in repr(keys)


def test_derive_keys_depends_on_secret_and_params() -> None:
    keys = derive_keys(SECRET, TINY)
    assert derive_keys(SECRET + b"x", TINY) != keys
    assert derive_keys(SECRET, Argon2Params(memory_cost=16, parallelism=1, time_cost=1)) != keys


@pytest.mark.parametrize("params", [
    Argon2Params(memory_cost=8, parallelism=2, time_cost=1),    # memory < 8 * parallelism
    Argon2Params(memory_cost=8, parallelism=1, time_cost=0),
    Argon2Params(memory_cost=-1, parallelism=1, time_cost=1),
])
def test_derive_keys_bad_params(params: Argon2Params) -> None:
    with pytest.raises(SecretError, match="argon2"):
        derive_keys(SECRET, params)


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


def test_cached_derivation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    children = ChildCounter(monkeypatch)
    cache_dir = tmp_path / "cache" / "nested"       # created on demand
    keys = derive_keys_cached(SECRET, TINY, cache_dir)
    assert keys == derive_keys(SECRET, TINY)
    assert len(children.commands) == 1
    command = children.commands[0]
    assert command[1:3] == ["-m", "devpitx.auth.secret"]
    assert not any(SECRET.decode() in arg for arg in command)   # secret only on stdin
    assert children.inputs == [SECRET]

    cache_file = cache_dir / CACHE_FILE_NAME
    assert mode_of(cache_file) == 0o600
    stored = cache_file.read_bytes()
    for form in (SECRET, base64.b64decode(SECRET).hex().encode(), SECRET.hex().encode()):
        assert form not in stored

    assert derive_keys_cached(SECRET, TINY, cache_dir) == keys
    assert len(children.commands) == 1      # served from the cache


def test_cache_misses_for_other_secret_or_params(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    children = ChildCounter(monkeypatch)
    derive_keys_cached(SECRET, TINY, tmp_path)
    other_params = Argon2Params(memory_cost=16, parallelism=1, time_cost=1)
    assert derive_keys_cached(SECRET, other_params, tmp_path) == derive_keys(SECRET, other_params)
    other_secret = SECRET[::-1]
    assert derive_keys_cached(other_secret, other_params, tmp_path) == \
        derive_keys(other_secret, other_params)
    assert len(children.commands) == 3


def seed_cache(cache_dir: Path, secret: bytes, params: Argon2Params, keys: DerivedKeys) -> Path:
    cache_file = cache_dir / CACHE_FILE_NAME
    cache_file.write_bytes(secret_module._encode_cache(
        secret_module._fingerprint(secret, params), keys))
    cache_file.chmod(0o600)
    return cache_file


def test_cache_is_read_without_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    children = ChildCounter(monkeypatch)
    planted = DerivedKeys(auth_key=b"a" * 16, replica_key=b"r" * 16)
    seed_cache(tmp_path, SECRET, TINY, planted)
    assert derive_keys_cached(SECRET, TINY, tmp_path) == planted
    assert children.commands == []


@pytest.mark.parametrize("damage", [
    b"", b"not json", b"[]", b'{"format": 1}',
    b'{"format": 1, "fingerprint": "x", "auth_key": "zz", "replica_key": "00"}',
])
def test_damaged_cache_is_recomputed(tmp_path: Path, damage: bytes) -> None:
    write(tmp_path / CACHE_FILE_NAME, damage)      # 0600: only the content is wrong
    assert derive_keys_cached(SECRET, TINY, tmp_path) == derive_keys(SECRET, TINY)
    assert json.loads((tmp_path / CACHE_FILE_NAME).read_bytes())["format"] == 1


def test_wrong_length_keys_in_cache_are_recomputed(tmp_path: Path) -> None:
    seed_cache(tmp_path, SECRET, TINY, DerivedKeys(auth_key=b"a" * 15, replica_key=b"r" * 16))
    assert derive_keys_cached(SECRET, TINY, tmp_path) == derive_keys(SECRET, TINY)


def test_loosened_cache_file_is_not_trusted(tmp_path: Path) -> None:
    planted = DerivedKeys(auth_key=b"a" * 16, replica_key=b"r" * 16)
    cache_file = seed_cache(tmp_path, SECRET, TINY, planted)
    cache_file.chmod(0o644)
    keys = derive_keys_cached(SECRET, TINY, tmp_path)
    assert keys == derive_keys(SECRET, TINY) != planted
    assert mode_of(cache_file) == 0o600


def test_unwritable_cache_dir_still_gives_keys(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    assert derive_keys_cached(SECRET, TINY, blocker / "cache") == derive_keys(SECRET, TINY)


def test_child_failure_is_a_secret_error(tmp_path: Path) -> None:
    bad = Argon2Params(memory_cost=8, parallelism=4, time_cost=1)
    with pytest.raises(SecretError, match="argon2"):
        derive_keys_cached(SECRET, bad, tmp_path)
    assert not (tmp_path / CACHE_FILE_NAME).exists()


def test_child_entry_point_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert secret_module._main(["8", "1"]) == 2
    assert secret_module._main(["8", "1", "x"]) == 2
    assert "usage" in capsys.readouterr().err
