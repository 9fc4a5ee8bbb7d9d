"""twistd plugin options: devpi-server's names, environment variables, config built from them."""
from __future__ import annotations

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
