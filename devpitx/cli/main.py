"""The ``devpitx`` console command: ``init`` and ``serve`` (more admin commands to come).

``devpitx serve ARGS`` is exactly ``twistd --nodaemon devpitx ARGS``.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from devpitx.config import DEFAULT_SERVERDIR
from devpitx.version import DEVPI_SERVER_COMPAT_VERSION, DEVPITX_VERSION


def fatal(message: str) -> int:
    print(f"fatal: {message}", file=sys.stderr)
    return 1


def cmd_init(argv: list[str]) -> int:
    from devpitx.cli.admin import init_serverdir
    from devpitx.config import ROLES, ConfigError, primary_url_from_options
    from devpitx.replica.roles import RoleError, choose_role
    from devpitx.storage.nodeinfo import ServerDirError
    from devpitx.storage.store import StoreLocked

    parser = argparse.ArgumentParser(prog="devpitx init", description="initialise a new server directory")
    parser.add_argument("--serverdir", default=os.environ.get("DEVPISERVER_SERVERDIR") or DEFAULT_SERVERDIR)
    parser.add_argument("--no-root-pypi", action="store_true", help="don't create the root/pypi mirror index")
    parser.add_argument("--root-passwd", default="", help="initial root password (default: empty)")
    parser.add_argument("--root-passwd-hash", default=None, help="initial root password hash")
    parser.add_argument("--root-passwd-from-stdin", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--role", default=os.environ.get("DEVPISERVER_ROLE") or "auto", choices=ROLES)
    parser.add_argument("--primary-url", default=os.environ.get("DEVPISERVER_PRIMARY_URL") or None,
                        help="initialise an empty replica of this primary")
    parser.add_argument("--master-url", default=os.environ.get("DEVPISERVER_MASTER_URL") or None,
                        help=argparse.SUPPRESS)     # deprecated alias of --primary-url
    # Accepted like devpi-init does, so deployment scripts can pass the same options to
    # every command; init derives no keys, so they have no effect here.
    for option in ("--argon2-memory-cost", "--argon2-parallelism", "--argon2-time-cost", "--storage",
                   "--keyfs-cache-size", "--secretfile"):
        parser.add_argument(option, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    password = sys.stdin.read() if args.root_passwd_from_stdin else args.root_passwd
    serverdir = Path(os.path.expanduser(args.serverdir)).absolute()
    try:
        choice = choose_role(None, None, args.role, primary_url_from_options(args.primary_url, args.master_url))
        init_serverdir(serverdir, root_password=password, root_pwhash=args.root_passwd_hash,
                       no_root_pypi=args.no_root_pypi, role=choice.role, primary_url=choice.primary_url)
    except (ConfigError, RoleError, ServerDirError, StoreLocked) as exc:
        return fatal(str(exc))
    print(f"initialised {serverdir}")
    return 0


def cmd_serve(argv: list[str]) -> int:
    import gc
    gc.disable()    # until makeService has loaded the state and frozen the heap (it enables it again)
    from twisted.scripts.twistd import run

    sys.argv = ["twistd", "--nodaemon", "--pidfile=", "devpitx", *argv]
    run()
    return 0


def cmd_fsck(argv: list[str]) -> int:
    from devpitx.storage.fsck import check
    from devpitx.storage.store import StoreLocked

    parser = argparse.ArgumentParser(prog="devpitx fsck", description="check a stopped server directory")
    parser.add_argument("--serverdir", default=os.environ.get("DEVPISERVER_SERVERDIR") or DEFAULT_SERVERDIR)
    parser.add_argument("--checksum", dest="checksums", action="store_true", default=True)
    parser.add_argument("--no-checksum", dest="checksums", action="store_false")
    args = parser.parse_args(argv)
    serverdir = Path(os.path.expanduser(args.serverdir)).absolute()
    try:
        report = check(serverdir, checksums=args.checksums, progress=print)
    except StoreLocked as exc:
        return fatal(str(exc))
    for problem in report.problems[:9]:
        print(problem)
    if len(report.problems) > 9:
        print(f"... and {len(report.problems) - 9} more problems")
    print(f"checked {report.entries} journal entries, {report.keys} keys, {report.files} files "
          f"({report.blobs_checked} checksums)")
    if not report.ok:
        return fatal("There have been errors during consistency check.")
    return 0


COMMANDS = {"init": cmd_init, "serve": cmd_serve, "fsck": cmd_fsck}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "--version":
        print(f"devpitx {DEVPITX_VERSION}")
        print(DEVPI_SERVER_COMPAT_VERSION)
        return 0
    if not args or args[0] in ("-h", "--help") or args[0] not in COMMANDS:
        print("usage: devpitx {init,serve,fsck} [options]   (devpitx COMMAND --help for options)",
              file=sys.stderr if args and args[0] not in ("-h", "--help") else sys.stdout)
        return 0 if args and args[0] in ("-h", "--help") else 2
    return COMMANDS[args[0]](args[1:])


if __name__ == "__main__":
    sys.exit(main())
