"""Replication feed on a standalone server."""
from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.helpers.testserver import BASE, make_test_server, stub_client


class ChangelogTests(SynchronousTestCase):
    def test_standalone_refuses_replication(self) -> None:
        server = make_test_server(self.mktemp())
        http = stub_client(server)
        for path in ("/+changelog/0", "/+changelog/0-"):
            response = self.successResultOf(http.get(f"{BASE}{path}"))
            self.assertEqual(response.code, 403)
            self.assertIn(b"Replication protocol disabled", self.successResultOf(response.content()))
