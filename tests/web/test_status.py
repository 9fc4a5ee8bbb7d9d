"""Tests for ``GET /+status`` and ``GET /+authcheck`` (http-api.md §3.3, §3.4)."""
from __future__ import annotations

from devpitx.model.releases import register
from devpitx.version import DEVPI_SERVER_COMPAT_VERSION, DEVPITX_VERSION
from tests.web.test_api import ServerTestCase


class StatusTests(ServerTestCase):
    def status(self) -> dict:  # type: ignore[type-arg]
        reply = self.request("GET", "/+status")
        self.assertEqual(reply.code, 200)
        self.assertEqual(reply.json["type"], "status")
        result: dict = reply.json["result"]  # type: ignore[type-arg]
        return result

    def test_fields(self) -> None:
        result = self.status()
        server = self.server
        self.assertEqual(result["role"], "MASTER")
        self.assertEqual(result["uuid"], server.node.uuid)
        self.assertEqual(result["serverdir"], str(server.config.serverdir))
        self.assertEqual(result["versioninfo"], {"devpi-server": DEVPI_SERVER_COMPAT_VERSION,
                                                 "devpitx": DEVPITX_VERSION})
        self.assertEqual(result["serial"], server.store.serial)
        self.assertEqual(result["event-serial"], server.store.serial)
        self.assertEqual(result["last-commit-timestamp"], server.store.last_commit_at)
        self.assertEqual(result["host"], server.config.host)
        self.assertEqual(result["port"], server.config.port)
        self.assertIsNone(result["outside-url"])
        self.assertEqual(result["polling_replicas"], {})
        self.assertTrue(result["server-code"].endswith("devpitx"))

    def test_polling_replicas(self) -> None:
        self.server.polling_replicas.request_started("a" * 32, remote_ip="192.0.2.9", requested_serial=3,
                                                     is_streaming=False, outside_url=None)
        self.assertEqual(self.status()["polling_replicas"], {"a" * 32: {
            "remote-ip": "192.0.2.9", "serial": 2, "in-request": True, "is-streaming": False,
            "last-request": self.clock.seconds(), "outside-url": None}})

    def test_serial_follows_commits(self) -> None:
        self.clock.advance(10)
        self.add_user("alice")
        result = self.status()
        self.assertEqual(result["serial"], self.server.store.serial)
        self.assertEqual(result["last-commit-timestamp"], self.clock.seconds())

    def test_metrics(self) -> None:
        self.add_user("alice")
        self.add_index("alice", "dev")
        with self.server.store.write() as tx:
            register(tx, "alice", "dev", {"name": "Pkg", "version": "1.0"}, full=True)
            register(tx, "alice", "dev", {"name": "other", "version": "1.0"}, full=True)
        metrics = self.status()["metrics"]
        names = [m[0] for m in metrics]
        self.assertEqual(len(names), len(set(names)))
        for name, kind, value in metrics:
            self.assertIn(kind, ("counter", "gauge"))
            self.assertIsInstance(value, (int, float))
        by_name = {m[0]: m[2] for m in metrics}
        self.assertEqual(by_name["devpitx_users"], 2)
        self.assertEqual(by_name["devpitx_indexes"], 2)
        self.assertEqual(by_name["devpitx_mirror_indexes"], 1)
        self.assertEqual(by_name["devpitx_private_projects"], 2)
        # Counted once per serial, and counted again after the next commit.
        self.clock.advance(5)
        again = {m[0]: m[2] for m in self.status()["metrics"]}
        self.assertEqual(again["devpitx_private_projects"], 2)
        self.assertEqual(again["devpitx_uptime_seconds"], by_name["devpitx_uptime_seconds"] + 5)
        with self.server.store.write() as tx:
            register(tx, "alice", "dev", {"name": "third", "version": "1.0"}, full=True)
        after = {m[0]: m[2] for m in self.status()["metrics"]}
        self.assertEqual(after["devpitx_private_projects"], 3)

    def test_json_only_and_get_only(self) -> None:
        self.assertEqual(self.request("GET", "/+status", accept="text/html").code, 404)
        self.assertEqual(self.request("GET", "/+status", accept=None).code, 200)
        self.assertEqual(self.request("POST", "/+status").code, 404)
        self.assertEqual(self.request("HEAD", "/+status").code, 200)

    def test_outside_url_option(self) -> None:
        from tests.helpers.testserver import make_test_server, stub_client
        server = make_test_server(self.temp_dir(), outside_url="http://out.example")
        self.addCleanup(server.store.close)
        self.http = stub_client(server)
        self.server = server
        self.assertEqual(self.status()["outside-url"], "http://out.example")


class AuthcheckTests(ServerTestCase):
    def check(self, uri: str | None, **headers: str) -> int:
        if uri is not None:
            headers["X-Original-Uri"] = uri
        reply = self.request("GET", "/+authcheck", headers=headers, accept=None)
        return reply.code

    def test_open_routes(self) -> None:
        self.assertEqual(self.check("/+api"), 200)
        self.assertEqual(self.check("/root/pypi/+api"), 200)
        self.assertEqual(self.check("/+login"), 200)

    def test_no_route_is_403(self) -> None:
        self.assertEqual(self.check("/a/b/c/d/e/f"), 403)
        self.assertEqual(self.check("/root/pypi/+simple/pytest/1.0/"), 403)

    def test_files_and_other_routes(self) -> None:
        self.assertEqual(self.check("/root/pypi/+f/abc/def/pkg-1.0.tar.gz"), 200)
        self.assertEqual(self.check("/nobody/dev/+f/abc/def/pkg-1.0.tar.gz"), 200)
        self.assertEqual(self.check("/root/pypi/+simple/pkg/?x=1"), 200)
        self.assertEqual(self.check("/"), 200)

    def test_without_header_checks_itself(self) -> None:
        self.assertEqual(self.check(None), 200)

    def test_mount_prefix_is_removed(self) -> None:
        self.assertEqual(self.check("/devpi/a/b/c/d/e/f", **{"X-Outside-Url": "http://h/devpi"}), 403)
        self.assertEqual(self.check("/devpi/+api", **{"X-Outside-Url": "http://h/devpi"}), 200)

    def test_empty_body(self) -> None:
        reply = self.request("GET", "/+authcheck", headers={"X-Original-Uri": "/+api"})
        self.assertEqual(reply.body, b"")
