"""The ``+replica`` identity of a replica's bearer token (auth.md §9) in RequestIdentity."""
from __future__ import annotations

import base64
import shutil
import tempfile
from typing import cast

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IRequest
from twisted.web.test.requesthelper import DummyRequest

from devpitx.auth.acl import ANONYMOUS, REPLICA, Identity, has_permission
from devpitx.auth.tokens import REPLICA_TOKEN_SECONDS, ReplicaTokens
from devpitx.server import Server
from devpitx.web.errors import ApiError
from tests.helpers.testserver import TEST_REPLICA_KEY, make_test_server

REPLICA_UUID = "3f2a" * 8


def as_request(request: DummyRequest) -> IRequest:
    return cast(IRequest, request)


class ReplicaIdentityTests(SynchronousTestCase):
    role = "primary"

    def setUp(self) -> None:
        path = tempfile.mkdtemp(prefix="devpitx-test-")
        self.addCleanup(shutil.rmtree, path, ignore_errors=True)
        self.clock = Clock()
        self.server: Server = make_test_server(path, clock=self.clock, role=self.role, root_password="rootpw")
        self.addCleanup(self.server.store.close)
        self.tokens = ReplicaTokens(TEST_REPLICA_KEY)

    def request(self, token: str | None = None, replica_uuid: str | None = REPLICA_UUID,
                **headers: str) -> DummyRequest:
        request = DummyRequest([b""])
        if token is None:
            token = self.tokens.issue(REPLICA_UUID, self.clock.seconds())
        request.requestHeaders.setRawHeaders(b"authorization", [f"Bearer {token}".encode()])
        if replica_uuid is not None:
            request.requestHeaders.setRawHeaders(b"x-devpi-replica-uuid", [replica_uuid.encode()])
        for name, value in headers.items():
            request.requestHeaders.setRawHeaders(name.replace("_", "-").encode(), [value.encode()])
        return request

    def identify(self, request: DummyRequest) -> Identity:
        d = Deferred.fromCoroutine(self.server.identity.identify(as_request(request)))
        return self.successResultOf(d)

    def refusal(self, request: DummyRequest) -> tuple[int, str]:
        d = Deferred.fromCoroutine(self.server.identity.identify(as_request(request)))
        failure = self.failureResultOf(d, ApiError)
        error = failure.value
        assert isinstance(error, ApiError)
        return error.code, error.message

    def test_valid_token_is_the_replica(self) -> None:
        self.assertEqual(self.identify(self.request()), REPLICA)
        self.assertEqual(self.server.identity.replica_identity(as_request(self.request())), REPLICA)

    def test_replica_may_read_everywhere(self) -> None:
        identity = self.identify(self.request())
        # Even where a (plugin's) index ACL would let nobody else read.
        self.assertTrue(has_permission("pkg_read", identity, url_user="alice", index_config=None,
                                       restrict_modify=None))
        self.assertTrue(self.server.identity.permitted("pkg_read", identity, url_user="alice",
                                                       index_config={"type": "stage", "acl_upload": []}))
        self.assertFalse(self.server.identity.permitted("upload", identity, url_user="alice",
                                                        index_config={"type": "stage", "acl_upload": [":AUTHENTICATED:"]}))
        self.assertFalse(self.server.identity.permitted("index_create", identity, url_user="alice"))

    def test_bad_tokens_are_refused(self) -> None:
        self.assertEqual(self.refusal(self.request(token="junk")), (403, "Authorization malformed."))
        other = self.tokens.issue("9" * 32, self.clock.seconds())
        self.assertEqual(self.refusal(self.request(token=other)), (403, "Wrong authorization value."))
        request = self.request()
        self.clock.advance(REPLICA_TOKEN_SECONDS + 1)
        self.assertEqual(self.refusal(request), (403, "Authorization expired."))

    def test_bearer_without_replica_uuid_is_ignored(self) -> None:
        self.assertEqual(self.identify(self.request(replica_uuid=None)), ANONYMOUS)
        self.assertIsNone(self.server.identity.replica_identity(as_request(self.request(token="junk", replica_uuid=None))))

    def test_user_credentials_win(self) -> None:
        # A user's write relayed by a replica keeps the user's identity.
        basic = base64.b64encode(b"root:rootpw").decode()
        request = self.request(x_devpi_auth=basic)
        self.assertEqual(self.identify(request), Identity("root"))


class NotAPrimaryTests(ReplicaIdentityTests):
    role = "standalone"

    def test_valid_token_is_the_replica(self) -> None:
        self.assertEqual(self.identify(self.request()), ANONYMOUS)
        self.assertIsNone(self.server.identity.replica_identity(as_request(self.request())))

    def test_replica_may_read_everywhere(self) -> None:
        self.assertEqual(self.identify(self.request()), ANONYMOUS)

    def test_bad_tokens_are_refused(self) -> None:
        # Ignored, not refused: only a primary checks replica tokens.
        self.assertEqual(self.identify(self.request(token="junk")), ANONYMOUS)
