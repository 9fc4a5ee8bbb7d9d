"""The server secret and the keys derived from it (auth.md §3, cli.md §7).

Owns the startup checks of ``--secretfile``, writing a new secret file
(``gen-secret``), and the Argon2id derivation of the auth and replica keys.
The derivation allocates 512 MiB with the reference parameters, so
``derive_keys_cached`` runs it in a child process (``python -m
devpitx.auth.secret``) and remembers the result in the cache directory: the
server's own peak RSS never sees that allocation.

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
from pathlib import Path

import argon2
from argon2.exceptions import HashingError

AUTH_SALT = b"devpi-server-auth"
REPLICA_SALT = b"devpi-server-replica"
CACHE_FILE_NAME = "derived-keys.json"
_CACHE_FORMAT = 1


class SecretError(Exception):
    """A fatal problem with the secret; the message is what the operator sees."""


@dataclass(frozen=True)
class Argon2Params:
    memory_cost: int = 524288       # KiB
    parallelism: int = 8
    time_cost: int = 16


@dataclass(frozen=True)
class DerivedKeys:
    auth_key: bytes
    replica_key: bytes

    def __repr__(self) -> str:
        return "DerivedKeys(<hidden>)"     # keys sign tokens: keep them out of logs


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


def derive_keys(secret: bytes, params: Argon2Params) -> DerivedKeys:
    """The auth and replica keys: raw Argon2id(secret, salt), 16 bytes, version 0x13."""
    try:
        return DerivedKeys(auth_key=_derive(secret, AUTH_SALT, params),
                           replica_key=_derive(secret, REPLICA_SALT, params))
    except (HashingError, OverflowError, ValueError) as e:     # bad or out-of-range parameters
        raise SecretError(f"Cannot derive keys with the given argon2 parameters: {e}") from e


def _derive(secret: bytes, salt: bytes, params: Argon2Params) -> bytes:
    return argon2.low_level.hash_secret_raw(
        secret, salt, time_cost=params.time_cost, memory_cost=params.memory_cost,
        parallelism=params.parallelism, hash_len=16, type=argon2.low_level.Type.ID,
        version=0x13)


def derive_keys_cached(secret: bytes, params: Argon2Params, cache_dir: Path) -> DerivedKeys:
    """``derive_keys``, computed in a child process once and then read from ``cache_dir``.

    The cache entry is keyed by a SHA-256 over secret and parameters (the
    secret itself is never stored); a different secret or different
    parameters simply miss. The file holds keys that sign tokens, so it is
    created 0600 like the secret file.
    """
    fingerprint = _fingerprint(secret, params)
    cache_file = cache_dir / CACHE_FILE_NAME
    cached = _read_cache(cache_file, fingerprint)
    if cached is not None:
        return cached
    keys = _derive_in_child(secret, params)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        _publish_private(cache_file, _encode_cache(fingerprint, keys), replace=True)
    except OSError:
        pass    # only a cache: the next start derives the keys again
    return keys


def _fingerprint(secret: bytes, params: Argon2Params) -> str:
    described = json.dumps(asdict(params), sort_keys=True).encode("ascii")
    return hashlib.sha256(b"devpitx derived keys\0" + described + b"\0" + secret).hexdigest()


def _encode_cache(fingerprint: str, keys: DerivedKeys) -> bytes:
    return json.dumps({"format": _CACHE_FORMAT, "fingerprint": fingerprint,
                       "auth_key": keys.auth_key.hex(),
                       "replica_key": keys.replica_key.hex()}).encode("ascii")


def _read_cache(cache_file: Path, fingerprint: str) -> DerivedKeys | None:
    try:
        if cache_file.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            return None     # somebody loosened it: don't trust it, rewrite it 0600
        data = json.loads(cache_file.read_bytes())
        if data["format"] != _CACHE_FORMAT or data["fingerprint"] != fingerprint:
            return None
        keys = DerivedKeys(auth_key=bytes.fromhex(data["auth_key"]),
                           replica_key=bytes.fromhex(data["replica_key"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None         # missing or damaged: derive again
    if len(keys.auth_key) != 16 or len(keys.replica_key) != 16:
        return None
    return keys


def _derive_in_child(secret: bytes, params: Argon2Params) -> DerivedKeys:
    # The secret travels on stdin, never on the command line (visible in ps).
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    result = subprocess.run(
        [sys.executable, "-m", "devpitx.auth.secret", str(params.memory_cost),
         str(params.parallelism), str(params.time_cost)],
        input=secret, capture_output=True, env=env, check=False)
    if result.returncode != 0:
        detail = result.stderr.decode("utf-8", "replace").strip().splitlines()
        raise SecretError(detail[-1] if detail else
                          f"key derivation failed with exit status {result.returncode}")
    try:
        data = json.loads(result.stdout)
        return DerivedKeys(auth_key=bytes.fromhex(data["auth_key"]),
                           replica_key=bytes.fromhex(data["replica_key"]))
    except (ValueError, KeyError, TypeError) as e:
        raise SecretError(f"key derivation produced unreadable output: {e}") from e


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
    """Child process: argon2 parameters as arguments, secret on stdin, keys on stdout."""
    try:
        memory_cost, parallelism, time_cost = (int(a) for a in argv)
    except ValueError:
        print("usage: python -m devpitx.auth.secret MEMORY_COST PARALLELISM TIME_COST",
              file=sys.stderr)
        return 2
    secret = sys.stdin.buffer.read()
    try:
        keys = derive_keys(secret, Argon2Params(memory_cost=memory_cost,
                                                parallelism=parallelism, time_cost=time_cost))
    except SecretError as e:
        print(str(e), file=sys.stderr)
        return 1
    sys.stdout.write(json.dumps({"auth_key": keys.auth_key.hex(),
                                 "replica_key": keys.replica_key.hex()}))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
