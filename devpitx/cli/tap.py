"""``twistd devpitx``: command-line options and makeService, the one place where everything is wired.

Storage is opened (locked, recovered) and the secret checked inside
makeService, so a broken directory fails before anything listens.
"""
from __future__ import annotations

import gc
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any

from twisted.application import strports
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from devpitx.config import DEFAULT_SERVERDIR, ROLES, Config, ConfigError
from devpitx.version import DEVPI_SERVER_COMPAT_VERSION, DEVPITX_VERSION

if TYPE_CHECKING:
    from devpitx.storage.nodeinfo import NodeInfo

log = Logger(namespace="devpitx.cli.tap")


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = "Serve private Python package indexes and a PyPI mirror (devpi-server compatible)."
    optParameters = [
        ["serverdir", None, DEFAULT_SERVERDIR, "server directory (initialised on first start)"],
        ["host", None, "localhost", "listen address"],
        ["port", None, "3141", "listen port"],
        ["outside-url", None, None, "externally visible base URL (scheme, host, optional path prefix)"],
        ["secretfile", None, None, "file with the secret that signs login tokens (default: <serverdir>/.secret)"],
        ["max-request-body-size", None, "1073741824", "largest accepted request body in bytes (413 above)"],
        ["argon2-memory-cost", None, "524288", "argon2 memory cost (KiB) of the token key derivation"],
        ["argon2-parallelism", None, "8", "argon2 parallelism of the token key derivation"],
        ["argon2-time-cost", None, "16", "argon2 time cost of the token key derivation"],
        ["restrict-modify", None, None, "comma list of users and :groups allowed to create/modify users and indexes"],
        ["root-passwd", None, "", "initial root password when initialising a new server directory"],
        ["root-passwd-hash", None, None, "initial root password hash when initialising"],
        ["mirror-cache-expiry", None, "1800", "default seconds before mirrored project pages are revalidated"],
        ["request-timeout", None, "5", "timeout in seconds for upstream requests"],
        ["threads", None, "4", "size of the pool for blocking work (disk, hashing)"],
        ["role", None, "auto", "auto, standalone, primary (legacy: master) or replica (spec/cli.md §2.3)"],
        ["primary-url", None, None, "run as a replica of the primary at this URL (no credentials in it)"],
        ["master-url", None, None, "deprecated alias of --primary-url"],
        ["replica-file-search-path", None, None, "replica: look for release files here before downloading them"],
        ["file-replication-threads", None, "5", "replica: number of parallel file downloads"],
        ["file-replication-skip-indexes", None, None,
         "replica: comma list of user/index names or index types (mirror) not to replicate files of, or 'all'"],
        ["proxy-timeout", None, "30", "replica: seconds to wait for the primary when relaying a write"],
        ["ssl-cert", None, None, "PEM certificate chain of this server: listen with TLS (with --ssl-key)"],
        ["ssl-key", None, None, "PEM private key of --ssl-cert"],
        ["ssl-client-ca", None, None,
         "PEM CA certificate(s) signing replica certificates: /+changelog requires a client certificate"],
        ["replica-cert", None, None, "replica: PEM client certificate presented to the primary (with --replica-key)"],
        ["replica-key", None, None, "replica: PEM private key of --replica-cert"],
        ["primary-ca", None, None,
         "replica: PEM CA certificate(s) to verify the primary with (default: REQUESTS_CA_BUNDLE, else the system's)"],
        ["storage", None, None, "storage backend (accepted for compatibility: only the default exists)"],
        ["keyfs-cache-size", None, None, "accepted for compatibility; unused"],
        ["connection-limit", None, None, "accepted for compatibility; unused"],
    ]
    optFlags = [
        ["debug", None, "debug logging"],
        ["no-root-pypi", None, "do not create root/pypi when initialising"],
        ["absolute-urls", None, "absolute links in simple pages"],
        ["offline-mode", None, "never contact upstream indexes"],
        ["hard-links", None, "hard-link files instead of copying them (replica file search path)"],
        ["no-replica-streaming", None, "replica: fetch changes as JSON lists instead of a stream"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self._apply_environment()

    def _apply_environment(self) -> None:
        """``DEVPISERVER_SOME_NAME`` sets ``--some-name`` unless the command line does (spec/cli.md §1.2)."""
        for name, *_ in self.optParameters:
            value = os.environ.get(env_name(str(name)))
            if value:
                self[str(name)] = value
        for name, *_ in self.optFlags:
            value = os.environ.get(env_name(str(name)))
            if value:
                self[str(name)] = parse_flag(str(name), value)
        listen = os.environ.get(env_name("listen"))
        if listen:
            self["listen"] = [listen]
            self._listen_from_environment = True
        legacy_serverdir = os.environ.get("DEVPI_SERVERDIR")
        if legacy_serverdir and not os.environ.get(env_name("serverdir")):
            log.warn("DEVPI_SERVERDIR is deprecated, use DEVPISERVER_SERVERDIR")
            self["serverdir"] = legacy_serverdir

    def opt_listen(self, value: str) -> None:
        """Listen on a Twisted endpoint string (tcp:3141:interface=127.0.0.1) or HOST:PORT; repeatable."""
        if getattr(self, "_listen_from_environment", False):
            self["listen"] = []  # the command line replaces the environment's value
            self._listen_from_environment = False
        self["listen"].append(value)

    def opt_version(self) -> None:
        """Print the version (last line: the devpi-server feature level served) and exit."""
        print(f"devpitx {DEVPITX_VERSION}")
        print(DEVPI_SERVER_COMPAT_VERSION)
        sys.exit(0)

    def postOptions(self) -> None:
        if self["role"] not in ROLES:
            raise usage.UsageError(f"--role must be one of {', '.join(ROLES)}, got {self['role']!r}")
        storage = self["storage"]
        if storage and storage.split(":")[0] not in ("sqlite", "fs", "devpitx"):
            raise usage.UsageError(f"The backend '{storage.split(':')[0]}' can't be found, is the plugin not installed?")


def env_name(option: str) -> str:
    return "DEVPISERVER_" + option.upper().replace("-", "_")


def parse_flag(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("y", "yes", "t", "true", "on", "1"):
        return True
    if lowered in ("n", "no", "f", "false", "off", "0"):
        return False
    raise usage.UsageError(f"invalid value {value!r} for {env_name(name)}")


@implementer(IStreamServerEndpoint)
class AnnouncingEndpoint:
    """Logs the address actually bound (port 0 in tests) so that callers can find it."""

    def __init__(self, wrapped: IStreamServerEndpoint, *, scheme: str = "http") -> None:
        self._wrapped = wrapped
        self._scheme = scheme

    def listen(self, factory: Any) -> Deferred[IListeningPort]:
        def announce(port: IListeningPort) -> IListeningPort:
            address = port.getHost()
            log.info("listening on {listening_host}:{listening_port}",
                     listening_host=getattr(address, "host", str(address)),
                     listening_port=getattr(address, "port", 0), listening_scheme=self._scheme)
            return port
        return self._wrapped.listen(factory).addCallback(announce)


class StoreService(Service):
    """Closes the store (releases its lock) when the application stops."""

    def __init__(self, close: Any) -> None:
        self._close = close

    def stopService(self) -> Any:
        super().stopService()
        self._close()


def initialise_in_child(config: Config, role: str = "standalone") -> None:
    """Run ``devpitx init`` in a child process: hashing the root password with the reference
    argon2 parameters takes 100 MiB, which should not stay in the server's peak RSS.
    ``role`` is standalone or primary (replicas start empty: ``init_replica_serverdir``)."""
    command = [sys.executable, "-m", "devpitx.cli.main", "init", "--serverdir", str(config.serverdir),
               "--root-passwd-from-stdin", "--role", role]
    if config.no_root_pypi:
        command.append("--no-root-pypi")
    if config.root_passwd_hash:
        command += ["--root-passwd-hash", config.root_passwd_hash]
    result = subprocess.run(command, input=config.root_passwd.encode(), capture_output=True)
    if result.returncode != 0:
        raise SystemExit(result.stderr.decode(errors="replace").strip() or "initialisation failed")


def makeService(options: Options) -> IService:
    # Start-up allocates the whole loaded state (tens of thousands of dicts) on top of the
    # imports; with the collector on, every collection that reaches the old generation walks
    # all of it again (10,000 projects: the snapshot parse took 0.23 s with it, 0.11 s without).
    # The loaded state is long-lived: freezing it keeps later full collections from scanning
    # it and pausing requests; the HeapFreezer does the same for state committed later.
    gc.disable()
    try:
        return _make_service(options)
    finally:
        gc.freeze()     # no collection first: start-up leaves little garbage, and it costs 50 ms
        gc.enable()


def prepare_node(config: Config) -> NodeInfo:
    """Initialise a missing server directory and record this start's role in ``.nodeinfo``.

    Runs before the store is opened, so that nothing reads a directory whose role is
    not settled yet. Raises ``RoleError`` / ``ServerDirError`` with the fatal message.
    """
    from devpitx.cli.admin import init_replica_serverdir
    from devpitx.replica.roles import REPLICA, apply_role, choose_role
    from devpitx.storage import nodeinfo

    if config.serverdir.exists():
        nodeinfo.refuse_foreign(config.serverdir)
    if not nodeinfo.is_initialised(config.serverdir):
        first = choose_role(None, None, config.role, config.primary_url)
        if first.role == REPLICA:
            assert first.primary_url is not None
            init_replica_serverdir(config.serverdir, first.primary_url)    # nothing to hash: in process
        else:
            initialise_in_child(config, first.role)
    stored = nodeinfo.load(config.serverdir)
    node = apply_role(stored, config.role, config.primary_url)
    if node != stored:
        nodeinfo.save(config.serverdir, node)
        log.info("role {role} recorded in {serverdir}", role=node.role, serverdir=str(config.serverdir))
    return node


def replica_http_agent(reactor: Any, config: Config, primary_url: str) -> Any:
    """The replica's Agent: with ``--replica-cert`` / ``--primary-ca`` its TLS policy presents
    the replica's certificate to the primary (and only to it) and verifies the primary against
    its CA. Raises ``ConfigError`` for unusable files."""
    from devpitx.mirror.upstream import LazyTrustPolicy, ca_bundle_path, make_http_agent
    from devpitx.tls import replica_tls_policy

    return make_http_agent(reactor, replica_tls_policy(config, primary_url, LazyTrustPolicy(), ca_bundle_path()))


def _make_service(options: Options) -> IService:
    from twisted.internet import (
        reactor as _reactor,  # the only module that names the reactor
    )

    reactor: Any = _reactor

    from devpitx.auth.authkey import AuthKeyDerivation, LoginTokensWaiter
    from devpitx.auth.passwords import Passwords
    from devpitx.auth.processpool import ProcessPoolRunner
    from devpitx.auth.secret import (
        Argon2Params,
        KeyName,
        SecretError,
        cached_key,
        check_params,
        derive_key_cached,
        read_secret_file,
    )
    from devpitx.auth.tokens import LoginTokens, ReplicaTokens
    from devpitx.mirror.upstream import make_http_client
    from treq.client import HTTPClient
    from devpitx.replica.roles import RoleError
    from devpitx.runtime import HeapFreezer, ThreadPoolService
    from devpitx.server import Server
    from devpitx.storage import nodeinfo
    from devpitx.storage.store import Store, StoreLocked
    from devpitx.tls import listen_scheme, listening_tls_options, tls_listen_endpoint

    try:
        config = Config.from_options(options)
        # Certificates are read before anything is initialised or opened: a wrong file stops here.
        listening_tls = listening_tls_options(config)
    except ConfigError as exc:
        raise SystemExit(f"fatal: {exc}") from None
    if options.get("master-url"):
        log.warn("The --master-url option is deprecated, use --primary-url instead.")
    try:
        node = prepare_node(config)
        is_replica = node.role == "replica"
        store = Store.open(config.serverdir, reactor, background_flush=True, replica=is_replica)
    except (nodeinfo.ServerDirError, RoleError, StoreLocked) as exc:
        raise SystemExit(f"fatal: {exc}") from None
    # Keys derived from the secret (argon2, seconds each with the reference parameters): only
    # the replica key is awaited here, by the nodes that need it from the first request on (a
    # replica signs its changelog requests with it, a primary checks theirs). The auth key is
    # only for login tokens: when it is not cached, AuthKeyDerivation derives it after start-up.
    argon2_params = Argon2Params(config.argon2_memory_cost, config.argon2_parallelism, config.argon2_time_cost)
    key_cache = config.serverdir / "cache"
    try:
        secret = read_secret_file(config.secretfile or config.serverdir / ".secret")
        check_params(argon2_params)
        replica_key = None
        if node.role in ("primary", "replica"):
            replica_key = derive_key_cached(secret, argon2_params, KeyName.REPLICA, key_cache)
        auth_key = cached_key(secret, argon2_params, KeyName.AUTH, key_cache)
    except SecretError as exc:
        store.close()
        raise SystemExit(f"fatal: {exc}") from None
    login_tokens = LoginTokensWaiter(LoginTokens(auth_key) if auth_key is not None else None)

    top = MultiService()
    StoreService(store.close).setServiceParent(top)
    disk = ThreadPoolService(ThreadPool(minthreads=0, maxthreads=config.threads, name="devpitx-disk"))
    disk.setServiceParent(top)
    argon = ProcessPoolRunner(reactor, max_workers=1)
    reactor.addSystemEventTrigger("after", "shutdown", argon.shutdown)
    # A replica talks to its primary even in offline mode (which only concerns mirrors).
    http = agent = None
    if is_replica:
        assert node.primary_url is not None     # prepare_node refuses a replica without one
        try:
            agent = replica_http_agent(reactor, config, node.primary_url)
        except ConfigError as exc:
            store.close()
            raise SystemExit(f"fatal: {exc}") from None
        http = HTTPClient(agent)
    elif not config.offline_mode:
        http = make_http_client(reactor)
    replica = None
    if is_replica:
        from devpitx.replica.service import ReplicaService, ReplicaSettings, exit_after_shutdown
        assert node.primary_url is not None and replica_key is not None
        # After the disk pool: it starts before the replication loop and stops after it.
        replica = ReplicaService(store, node, ReplicaSettings.from_config(config, node.primary_url), http=http,
                                 agent=agent, replica_key=replica_key, clock=reactor, run_disk=disk.runner(reactor),
                                 on_fatal=exit_after_shutdown(reactor))
        replica.setServiceParent(top)
    server = Server(config, store, node, clock=reactor, run_disk=disk.runner(reactor),
                    passwords=Passwords(argon, clock=reactor), login_tokens=login_tokens, http=http,
                    replica_tokens=ReplicaTokens(replica_key) if replica_key is not None else None,
                    replica=replica)
    site = server.site()
    frozen_at = [store.serial]

    def state_grew() -> bool:
        grew = store.serial != frozen_at[0]
        frozen_at[0] = store.serial
        return grew

    HeapFreezer(reactor, state_grew).setServiceParent(top)
    for description in config.listen:
        # strports.service (not a bare endpoint service): twistd exits when the port is taken.
        web = strports.service(description, site, reactor=reactor)
        web.endpoint = AnnouncingEndpoint(tls_listen_endpoint(reactor, description, listening_tls),
                                          scheme=listen_scheme(description, listening_tls))
        web.setServiceParent(top)
    if not login_tokens.ready:
        # Last: it starts once the ports listen and the replica pulls.
        AuthKeyDerivation(reactor, secret, argon2_params, key_cache, login_tokens).setServiceParent(top)
    log.info("devpitx {version} serving {serverdir} at serial {serial}",
             version=DEVPITX_VERSION, serverdir=str(config.serverdir), serial=store.serial)
    return top



