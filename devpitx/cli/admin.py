"""Administrative commands that run without a reactor: init (and, later, import/export/passwd/fsck).

They open the store directly and exit; a running server holds the store lock,
so they refuse to touch a directory in use.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from twisted.internet.task import Clock

from devpitx.auth.passwords import hash_password
from devpitx.auth.secret import write_new_secret_file
from devpitx.model.ixconfig import root_pypi_config
from devpitx.model.users import new_user_record
from devpitx.storage import nodeinfo
from devpitx.storage.keys import index_key, user_key
from devpitx.storage.nodeinfo import NodeInfo
from devpitx.storage.store import Store

SECRET_FILE = ".secret"


class WallClock(Clock):
    """A Clock that reads real time: admin commands have no reactor but need timestamps."""

    def seconds(self) -> float:
        import time
        return time.time()


def init_serverdir(serverdir: Path, *, root_password: str = "", root_pwhash: str | None = None,
                   no_root_pypi: bool = False, hasher: Callable[[str], str] = hash_password,
                   make_secret: bool = True, role: str = "standalone",
                   primary_url: str | None = None) -> NodeInfo:
    """Create a server directory with root (and root/pypi) as serial 0 (model.md §8).

    ``.nodeinfo`` is written last: a directory interrupted before that is not
    initialised, and init can simply be run again after removing it.
    ``role`` is already decided (replica/roles.py); a replica starts empty.
    """
    if role == "replica":
        if not primary_url:
            raise nodeinfo.ServerDirError("need to specify --primary-url to run as replica")
        return init_replica_serverdir(serverdir, primary_url)
    info = nodeinfo.prepare_new(serverdir, role)
    if make_secret and not (serverdir / SECRET_FILE).exists():
        write_new_secret_file(serverdir / SECRET_FILE)
    store = Store.open(serverdir, WallClock())
    try:
        if store.serial >= 0:
            raise nodeinfo.ServerDirError(
                f"The path '{serverdir}' already holds journal entries but no node info; remove it and retry."
            )
        pwhash = root_pwhash or hasher(root_password)
        with store.write() as tx:
            tx.set(user_key("root"), new_user_record(pwhash, {}, tx.at))
            if not no_root_pypi:
                tx.set(index_key("root", "pypi"), root_pypi_config())
    finally:
        store.close()
    nodeinfo.save(serverdir, info)
    return info


def init_replica_serverdir(serverdir: Path, primary_url: str) -> NodeInfo:
    """Create an EMPTY replica directory: node info only, no root user, no root/pypi.

    Everything from serial 0 on comes from the primary (cli.md §3), so the
    replica's serials are the primary's. No secret file is made either: a
    replica must be given its primary's (``--secretfile``), a fresh random one
    would only make every replication request fail with 403.
    """
    info = nodeinfo.prepare_new(serverdir, "replica")
    info.primary_url = primary_url
    store = Store.open(serverdir, WallClock())
    try:
        if store.serial >= 0:
            raise nodeinfo.ServerDirError(
                f"The path '{serverdir}' already holds journal entries but no node info; remove it and retry."
            )
    finally:
        store.close()
    nodeinfo.save(serverdir, info)
    return info
