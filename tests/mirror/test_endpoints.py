"""ReusedEndpoints: the endpoints of make_http_agent, made once per scheme, host and port."""
from __future__ import annotations

import pytest
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.web.client import URI, BrowserLikePolicyForHTTPS
from twisted.web.error import SchemeNotSupported

from devpitx.mirror.upstream import ReusedEndpoints


def endpoints() -> ReusedEndpoints:
    return ReusedEndpoints(MemoryReactorClock(), BrowserLikePolicyForHTTPS())


def test_one_endpoint_per_scheme_host_and_port() -> None:
    made = endpoints()
    first = made.endpointForURI(URI.fromBytes(b"http://127.0.0.1:3141/root/pypi/+f/a.whl"))
    assert isinstance(first, HostnameEndpoint)
    assert made.endpointForURI(URI.fromBytes(b"http://127.0.0.1:3141/other")) is first
    assert made.endpointForURI(URI.fromBytes(b"http://127.0.0.1:3142/other")) is not first
    tls = made.endpointForURI(URI.fromBytes(b"https://127.0.0.1:3141/other"))
    assert tls is not first and not isinstance(tls, HostnameEndpoint)     # TCP wrapped in TLS
    assert made.endpointForURI(URI.fromBytes(b"https://127.0.0.1:3141/x")) is tls


def test_other_schemes_are_refused() -> None:
    with pytest.raises(SchemeNotSupported):
        endpoints().endpointForURI(URI.fromBytes(b"ftp://127.0.0.1/x"))
