"""twistd plugin options: devpi-server's names, environment variables, config built from them."""
from __future__ import annotations

from pathlib import Path

import pytest
from twisted.python import usage

from devpitx.cli.tap import Options
from devpitx.config import Config, ConfigError


def parse(argv: list[str]) -> Config:
    options = Options()
    options.parseOptions(argv)
    return Config.from_options(options)


def test_defaults_follow_devpi_server() -> None:
    config = parse([])
    assert config.listen == ("tcp:3141:interface=localhost",)
    assert config.max_request_body_bytes == 1024 ** 3
    assert config.argon2_memory_cost == 524288


def test_listen_accepts_endpoint_strings_and_host_port() -> None:
    assert parse(["--listen", "tcp:0:interface=127.0.0.1"]).listen == ("tcp:0:interface=127.0.0.1",)
    assert parse(["--listen", "127.0.0.1:4000", "--listen", "*:4001"]).listen == (
        "tcp:4000:interface=127.0.0.1", "tcp:4001")
    assert parse(["--listen", "[::1]:4000"]).listen == (r"tcp:4000:interface=\:\:1",)


def test_listen_and_host_port_together_are_refused() -> None:
    with pytest.raises(ConfigError, match="either --listen or --host/--port"):
        parse(["--listen", "tcp:0", "--port", "4000"])


def test_environment_variables_set_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVPISERVER_PORT", "4444")
    monkeypatch.setenv("DEVPISERVER_OFFLINE_MODE", "yes")
    monkeypatch.setenv("DEVPISERVER_RESTRICT_MODIFY", "root,:admins")
    config = parse([])
    assert config.port == 4444
    assert config.offline_mode is True
    assert config.restrict_modify == ("root", ":admins")


def test_command_line_beats_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVPISERVER_LISTEN", "tcp:1")
    monkeypatch.setenv("DEVPISERVER_SERVERDIR", "/env/dir")
    config = parse(["--listen", "tcp:2", "--serverdir", "/cli/dir"])
    assert config.listen == ("tcp:2",)
    assert str(config.serverdir) == "/cli/dir"


def test_tiny_argon2_parameters_are_accepted() -> None:
    config = parse(["--argon2-memory-cost", "8", "--argon2-parallelism", "1", "--argon2-time-cost", "1"])
    assert (config.argon2_memory_cost, config.argon2_parallelism, config.argon2_time_cost) == (8, 1, 1)


def test_unknown_storage_backend_is_refused() -> None:
    with pytest.raises(usage.UsageError, match="can't be found"):
        parse(["--storage", "postgresql"])
    assert parse(["--storage", "sqlite"]).listen


def test_bad_integer_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        parse(["--max-request-body-size", "lots"])


# -- replication options (spec/cli.md §2.2) ----------------------------------------------------------
def test_replication_defaults() -> None:
    config = parse([])
    assert (config.role, config.primary_url, config.replica_file_search_path) == ("auto", None, None)
    assert (config.file_replication_threads, config.file_replication_skip_indexes) == (5, ())
    assert (config.proxy_timeout, config.replica_streaming, config.hard_links) == (30.0, True, False)


def test_replication_options(tmp_path: Path) -> None:
    config = parse(["--primary-url", "https://primary.test:8443/devpi/", "--replica-file-search-path",
                    str(tmp_path), "--hard-links", "--file-replication-threads", "2",
                    "--file-replication-skip-indexes", "mirror, root/pypi,,mirror", "--proxy-timeout", "2.5",
                    "--no-replica-streaming"])
    assert config.primary_url == "https://primary.test:8443/devpi"
    assert config.replica_file_search_path == tmp_path
    assert config.hard_links is True
    assert config.file_replication_threads == 2
    assert config.file_replication_skip_indexes == ("mirror", "root/pypi")
    assert config.proxy_timeout == 2.5
    assert config.replica_streaming is False
    assert parse(["--file-replication-skip-indexes", "all"]).file_replication_skip_indexes == ("all",)


def test_roles_and_the_legacy_spelling() -> None:
    for role in ("auto", "standalone", "primary", "replica"):
        assert parse(["--role", role]).role == role
    assert parse(["--role", "master"]).role == "primary"
    with pytest.raises(usage.UsageError, match="--role must be one of"):
        parse(["--role", "leader"])


def test_master_url_is_an_alias_but_not_both() -> None:
    assert parse(["--master-url", "http://primary.test"]).primary_url == "http://primary.test"
    with pytest.raises(ConfigError, match="Can't use both --master-url and --primary-url"):
        parse(["--master-url", "http://a.test", "--primary-url", "http://b.test"])


def test_primary_url_with_credentials_is_fatal_without_showing_them() -> None:
    for url in ("http://user:secret-pw@primary.test", "http://user@primary.test"):
        with pytest.raises(ConfigError, match="must not contain credentials") as caught:
            parse(["--primary-url", url])
        assert "secret-pw" not in str(caught.value)
    for url in ("ftp://primary.test", "primary.test", "http://", "http://primary.test:port"):
        with pytest.raises(ConfigError, match="--primary-url"):
            parse(["--primary-url", url])


def test_replica_file_search_path_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="doesn't exist"):
        parse(["--replica-file-search-path", str(tmp_path / "missing")])


def test_skip_all_cannot_be_mixed() -> None:
    with pytest.raises(ConfigError, match="'all' can't be combined"):
        parse(["--file-replication-skip-indexes", "all,mirror"])


def test_bad_replication_numbers() -> None:
    for argv in (["--file-replication-threads", "many"], ["--file-replication-threads", "-1"],
                 ["--proxy-timeout", "soon"], ["--proxy-timeout", "0"]):
        with pytest.raises(ConfigError):
            parse(argv)


def test_replication_environment_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DEVPISERVER_ROLE", "replica")
    monkeypatch.setenv("DEVPISERVER_PRIMARY_URL", "http://primary.test/")
    monkeypatch.setenv("DEVPISERVER_REPLICA_FILE_SEARCH_PATH", str(tmp_path))
    monkeypatch.setenv("DEVPISERVER_HARD_LINKS", "on")
    monkeypatch.setenv("DEVPISERVER_FILE_REPLICATION_THREADS", "3")
    monkeypatch.setenv("DEVPISERVER_FILE_REPLICATION_SKIP_INDEXES", "mirror")
    monkeypatch.setenv("DEVPISERVER_PROXY_TIMEOUT", "7")
    monkeypatch.setenv("DEVPISERVER_NO_REPLICA_STREAMING", "true")
    config = parse([])
    assert (config.role, config.primary_url, config.replica_file_search_path) == (
        "replica", "http://primary.test", tmp_path)
    assert (config.hard_links, config.file_replication_threads, config.file_replication_skip_indexes) == (
        True, 3, ("mirror",))
    assert (config.proxy_timeout, config.replica_streaming) == (7.0, False)
    assert parse(["--primary-url", "http://cli.test"]).primary_url == "http://cli.test"
    monkeypatch.setenv("DEVPISERVER_MASTER_URL", "http://legacy.test")
    with pytest.raises(ConfigError, match="Can't use both"):
        parse([])


# -- TLS (DESIGN.md §6, docs/replication.md) ------------------------------------------------------------
def test_tls_options_are_paths(tmp_path: Path) -> None:
    config = parse(["--ssl-cert", str(tmp_path / "s.pem"), "--ssl-key", str(tmp_path / "s.key"),
                    "--ssl-client-ca", str(tmp_path / "ca.pem"), "--replica-cert", str(tmp_path / "r.pem"),
                    "--replica-key", str(tmp_path / "r.key"), "--primary-ca", str(tmp_path / "pca.pem")])
    assert (config.ssl_cert, config.ssl_key, config.ssl_client_ca) == (
        tmp_path / "s.pem", tmp_path / "s.key", tmp_path / "ca.pem")
    assert (config.replica_cert, config.replica_key, config.primary_ca) == (
        tmp_path / "r.pem", tmp_path / "r.key", tmp_path / "pca.pem")
    plain = parse([])
    assert (plain.ssl_cert, plain.ssl_client_ca, plain.replica_cert, plain.primary_ca) == (None, None, None, None)


def test_tls_environment_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DEVPISERVER_SSL_CERT", str(tmp_path / "s.pem"))
    monkeypatch.setenv("DEVPISERVER_SSL_KEY", str(tmp_path / "s.key"))
    monkeypatch.setenv("DEVPISERVER_SSL_CLIENT_CA", str(tmp_path / "ca.pem"))
    monkeypatch.setenv("DEVPISERVER_REPLICA_CERT", str(tmp_path / "r.pem"))
    monkeypatch.setenv("DEVPISERVER_REPLICA_KEY", str(tmp_path / "r.key"))
    monkeypatch.setenv("DEVPISERVER_PRIMARY_CA", str(tmp_path / "pca.pem"))
    config = parse([])
    assert (config.ssl_cert, config.ssl_key, config.ssl_client_ca) == (
        tmp_path / "s.pem", tmp_path / "s.key", tmp_path / "ca.pem")
    assert (config.replica_cert, config.replica_key, config.primary_ca) == (
        tmp_path / "r.pem", tmp_path / "r.key", tmp_path / "pca.pem")


def test_certificates_and_keys_go_in_pairs() -> None:
    for argv in (["--ssl-cert", "s.pem"], ["--ssl-key", "s.key"], ["--replica-cert", "r.pem"],
                 ["--replica-key", "r.key"]):
        with pytest.raises(ConfigError, match="go together"):
            parse(argv)
    with pytest.raises(ConfigError, match="--ssl-client-ca needs --ssl-cert"):
        parse(["--ssl-client-ca", "ca.pem"])
