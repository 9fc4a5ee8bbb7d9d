"""The server secret and the keys derived from it (auth.md §3, cli.md §7).

Owns the startup checks of ``--secretfile``, writing a new secret file
(``gen-secret``), and the Argon2id derivation of the auth key (login tokens)
and the replica key (replica bearer tokens), each on its own. A derivation
allocates 512 MiB with the reference parameters, so it runs in a child process
(``python -m devpitx.auth.secret``): the server's own peak RSS never sees that
allocation. Each key is cached in its own file of the cache directory, so a
restart reads it at once. ``derive_key_cached`` blocks until the child is
done; ``devpitx.auth.authkey`` runs the same child without blocking the reactor.

This module imports nothing from Twisted: the child process stays small.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
import sys
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path

import argon2
from argon2.exceptions import HashingError

_CACHE_FORMAT = 2
_OLD_CACHE_FILE_NAME = "derived-keys.json"     # format 1: both keys in one file
_MAX_PARALLELISM = 0xFFFFFF
_MAX_UINT32 = 0xFFFFFFFF


class SecretError(Exception):
    """A fatal problem with the secret; the message is what the operator sees."""


class KeyName(Enum):
    """The keys derived from the secret; each has the reference's salt."""

    AUTH = "auth"           # signs login tokens
    REPLICA = "replica"     # signs the bearer tokens replicas present to their primary

    @property
    def salt(self) -> bytes:
        return b"devpi-server-" + self.value.encode("ascii")


@dataclass(frozen=True)
class Argon2Params:
    memory_cost: int = 524288       # KiB
    parallelism: int = 8
    time_cost: int = 16


def read_secret_file(path: Path) -> bytes:
    """The bytes of a secret file that passes every startup check, else ``SecretError``."""
    if not path.is_file():
        raise SecretError("The given secret file doesn't exist.")
    if sys.platform != "win32":
        mode = path.stat().st_mode
        if mode & stat.S_IRWXO:
            raise SecretError("The given secret file is world accessible, the access mode "
                              "must be user accessible only (0600).")
        if mode & stat.S_IRWXG:
            raise SecretError("The given secret file is group accessible, the access mode "
                              "must be user accessible only (0600).")
        dir_mode = path.absolute().parent.stat().st_mode
        if dir_mode & stat.S_IWGRP:
            raise SecretError("The folder of the given secret file is group writable, "
                              "it must only be writable by the user.")
        if dir_mode & stat.S_IWOTH:
            raise SecretError("The folder of the given secret file is world writable, "
                              "it must only be writable by the user.")
    secret = path.read_bytes()
    if len(secret) < 32:
        raise SecretError("The secret in the given secret file is too short, "
                          "it should be at least 32 characters long.")
    if len(set(secret)) < 6:
        raise SecretError("The secret in the given secret file is too weak, "
                          "it should use less repetition.")
    return secret


def new_secret() -> bytes:
    """``base64(32 random bytes)``: the content of a generated secret file."""
    return base64.b64encode(os.urandom(32))


def write_new_secret_file(path: Path) -> None:
    """Create ``path`` holding a new secret, mode 0600 from the first byte on.

    The secret is written to a temporary file created with mode 0600 and then
    linked to ``path``: readers see either no file or the complete secret, and
    an existing file is never replaced (``FileExistsError``).
    """
    _publish_private(path, new_secret(), replace=False)


def check_params(params: Argon2Params) -> None:
    """Raise ``SecretError`` for parameters Argon2id refuses, without deriving anything.

    The bounds of RFC 9106 §3.1 as the reference implementation checks them:
    a start-up with unusable parameters fails at once even when no key has to
    be derived before the server listens.
    """
    problem = None
    if not 1 <= params.parallelism <= _MAX_PARALLELISM:
        problem = f"parallelism must be between 1 and {_MAX_PARALLELISM}"
    elif not 8 * params.parallelism <= params.memory_cost <= _MAX_UINT32:
        problem = f"memory cost must be between 8 x parallelism ({8 * params.parallelism}) and {_MAX_UINT32} KiB"
    elif not 1 <= params.time_cost <= _MAX_UINT32:
        problem = f"time cost must be between 1 and {_MAX_UINT32}"
    if problem is not None:
        raise SecretError(f"Cannot derive keys with the given argon2 parameters: {problem}")


def derive_key(secret: bytes, params: Argon2Params, name: KeyName) -> bytes:
    """The key ``name``: raw Argon2id(secret, salt), 16 bytes, version 0x13, in this process."""
    try:
        return argon2.low_level.hash_secret_raw(
            secret, name.salt, time_cost=params.time_cost, memory_cost=params.memory_cost,
            parallelism=params.parallelism, hash_len=16, type=argon2.low_level.Type.ID,
            version=0x13)
    except (HashingError, OverflowError, ValueError) as e:     # bad or out-of-range parameters
        raise SecretError(f"Cannot derive keys with the given argon2 parameters: {e}") from e


def derive_key_cached(secret: bytes, params: Argon2Params, name: KeyName, cache_dir: Path) -> bytes:
    """``derive_key``, computed in a child process once and then read from ``cache_dir``.

    Blocks for the whole derivation on a cache miss (seconds with the
    reference parameters); ``devpitx.auth.authkey`` derives without blocking.
    """
    key = cached_key(secret, params, name, cache_dir)
    if key is not None:
        return key
    # The secret travels on stdin, never on the command line (visible in ps).
    result = subprocess.run(child_command(params, name), input=secret, capture_output=True,
                            env=child_environment(), check=False)
    key = read_child_output(result.returncode, result.stdout, result.stderr)
    remember_key(secret, params, name, cache_dir, key)
    return key


def cached_key(secret: bytes, params: Argon2Params, name: KeyName, cache_dir: Path) -> bytes | None:
    """The key ``name`` from ``cache_dir`` if it was derived from this secret with these
    parameters; None when it is missing, stale, damaged or readable by others."""
    cache_file = cache_dir / cache_file_name(name)
    try:
        if cache_file.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            return None     # somebody loosened it: don't trust it, rewrite it 0600
        data = json.loads(cache_file.read_bytes())
        if (data["format"] != _CACHE_FORMAT or data["key_name"] != name.value
                or data["fingerprint"] != _fingerprint(secret, params, name)):
            return None
        key = bytes.fromhex(data["key"])
    except (OSError, ValueError, KeyError, TypeError):
        return None         # missing or damaged: derive again
    return key if len(key) == 16 else None


def remember_key(secret: bytes, params: Argon2Params, name: KeyName, cache_dir: Path, key: bytes) -> None:
    """Cache ``key`` for ``cached_key``, mode 0600 like the secret file; never raises
    ``OSError``: without a cache the next start derives the key again."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        _publish_private(cache_dir / cache_file_name(name), _encode_cache(secret, params, name, key),
                         replace=True)
        # The cache of format 1 held both keys in one file: keys don't linger in old files.
        (cache_dir / _OLD_CACHE_FILE_NAME).unlink(missing_ok=True)
    except OSError:
        pass


def cache_file_name(name: KeyName) -> str:
    return f"derived-{name.value}-key.json"


def _fingerprint(secret: bytes, params: Argon2Params, name: KeyName) -> str:
    # Over the secret, never the secret itself: the cache must not reveal it.
    described = json.dumps(asdict(params), sort_keys=True).encode("ascii")
    return hashlib.sha256(b"devpitx derived key\0" + name.value.encode("ascii") + b"\0"
                          + described + b"\0" + secret).hexdigest()


def _encode_cache(secret: bytes, params: Argon2Params, name: KeyName, key: bytes) -> bytes:
    return json.dumps({"format": _CACHE_FORMAT, "key_name": name.value,
                       "fingerprint": _fingerprint(secret, params, name),
                       "key": key.hex()}).encode("ascii")


def child_command(params: Argon2Params, name: KeyName) -> list[str]:
    """The child process deriving ``name``: it reads the secret on stdin and writes the key
    on stdout; ``read_child_output`` reads its answer."""
    # -P: not the working directory first on sys.path; the child imports the server's own code.
    return [sys.executable, "-P", "-m", "devpitx.auth.secret", name.value, str(params.memory_cost),
            str(params.parallelism), str(params.time_cost)]


def child_environment() -> dict[str, str]:
    """The server's environment, with this checkout importable in the child."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


def read_child_output(exit_status: int, stdout: bytes, stderr: bytes) -> bytes:
    """The key the child of ``child_command`` wrote, else ``SecretError`` with its complaint.

    ``exit_status`` is negative for a child killed by that signal, as in ``subprocess``.
    """
    if exit_status != 0:
        detail = stderr.decode("utf-8", "replace").strip().splitlines()
        if detail:
            raise SecretError(detail[-1])
        if exit_status < 0:
            raise SecretError(f"key derivation was killed by signal {-exit_status}")
        raise SecretError(f"key derivation failed with exit status {exit_status}")
    try:
        key = bytes.fromhex(json.loads(stdout)["key"])
    except (ValueError, KeyError, TypeError) as e:
        raise SecretError(f"key derivation produced unreadable output: {e}") from e
    if len(key) != 16:
        raise SecretError(f"key derivation produced a key of {len(key)} bytes instead of 16")
    return key


def _publish_private(path: Path, data: bytes, *, replace: bool) -> None:
    """Write ``data`` to ``path`` via a 0600 temporary file, durably and atomically."""
    tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)    # the umask only removes bits; make it exactly 0600
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)      # raises FileExistsError instead of overwriting
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _main(argv: list[str]) -> int:
    """Child process: key name and argon2 parameters as arguments, secret on stdin, key on stdout."""
    try:
        name_text, memory_cost, parallelism, time_cost = argv
        name = KeyName(name_text)
        params = Argon2Params(memory_cost=int(memory_cost), parallelism=int(parallelism),
                              time_cost=int(time_cost))
    except ValueError:
        print("usage: python -m devpitx.auth.secret auth|replica MEMORY_COST PARALLELISM TIME_COST",
              file=sys.stderr)
        return 2
    secret = sys.stdin.buffer.read()
    try:
        key = derive_key(secret, params, name)
    except SecretError as e:
        print(str(e), file=sys.stderr)
        return 1
    sys.stdout.write(json.dumps({"key": key.hex()}))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
