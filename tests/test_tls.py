"""devpitx/tls.py: loading PEM files, the server's options, the replica's policy, real handshakes.

Handshakes run in memory (twisted.test.iosim) between TLSMemoryBIOProtocols built from
exactly the objects the server and the replica use.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet import ssl
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.testing import MemoryReactor
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from devpitx.config import Config
from devpitx.tls import (
    KeyPair,
    ReplicaTLSPolicy,
    TLSConfigError,
    listen_scheme,
    listening_tls_options,
    load_certificates,
    load_key_pair,
    peer_certificate,
    replica_tls_policy,
    server_tls_options,
    tcp_listen_arguments,
    tls_listen_endpoint,
    trust_root,
)
from tests.helpers.tls_certs import (
    CertificateAuthority,
    Issued,
    Recorder,
    tls_connection,
)


class PKI:
    """The CA of a deployment, its server and replica certificates, and a stranger's."""

    def __init__(self) -> None:
        self.ca = CertificateAuthority("devpitx test CA")
        self.server = self.ca.issue("primary", dns_names=["localhost"], ip_addresses=["127.0.0.1"])
        self.localhost_only = self.ca.issue("primary", dns_names=["localhost"])
        self.replica = self.ca.issue("replica-1", client=True)
        self.other_ca = CertificateAuthority("someone else's CA")
        self.foreign_replica = self.other_ca.issue("replica-1", client=True)
        self.foreign_server = self.other_ca.issue("primary", ip_addresses=["127.0.0.1"])


@pytest.fixture(scope="module")
def pki() -> PKI:
    return PKI()


def key_pair(issued: Issued) -> KeyPair:
    return KeyPair([issued.certificate], issued.key)


@implementer(IPolicyForHTTPS)
class RecordingPolicy:
    def __init__(self) -> None:
        self.asked: list[tuple[bytes, int]] = []

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        self.asked.append((hostname, port))
        return "fallback creator"


def handshake(server: Issued, client_cas: list[Any], creator: Any) -> tuple[Recorder, Recorder]:
    """Client sends b"ping" after connecting; returns (server side, client side)."""
    server_side, client_side = Recorder(), Recorder(b"ping")
    tls_connection(server_tls_options(key_pair(server), client_cas), creator, server_side, client_side)
    return server_side, client_side


def client_creator(pki: PKI, *, host: str = "127.0.0.1", client: Issued | None = None,
                   trust: Any = None) -> Any:
    policy = ReplicaTLSPolicy(f"https://{host}:3141", trust=trust or trust_root([pki.ca.certificate]),
                              client=key_pair(client) if client else None, fallback=RecordingPolicy())
    return policy.creatorForNetloc(host.encode(), 3141)


def peer_of(recorder: Recorder) -> Any:
    return peer_certificate(SimpleNamespace(transport=recorder.transport))   # type: ignore[arg-type]


# -- handshakes ---------------------------------------------------------------------------------------
def test_replica_certificate_signed_by_the_client_ca_is_seen_by_the_server(pki: PKI) -> None:
    server_side, _ = handshake(pki.server, [pki.ca.certificate], client_creator(pki, client=pki.replica))
    assert server_side.received == b"ping"
    assert peer_of(server_side) == pki.replica.certificate


def test_client_without_certificate_connects_but_presents_none(pki: PKI) -> None:
    server_side, _ = handshake(pki.server, [pki.ca.certificate], client_creator(pki))
    assert server_side.received == b"ping"       # other endpoints stay usable without a certificate
    assert peer_of(server_side) is None


def test_certificate_from_another_ca_fails_the_handshake(pki: PKI) -> None:
    server_side, client_side = handshake(pki.server, [pki.ca.certificate],
                                         client_creator(pki, client=pki.foreign_replica))
    assert server_side.received == b""
    assert server_side.lost is not None and client_side.lost is not None


def test_without_client_ca_no_certificate_is_asked_for(pki: PKI) -> None:
    server_side, _ = handshake(pki.server, [], client_creator(pki, client=pki.replica))
    assert server_side.received == b"ping"
    assert peer_of(server_side) is None


def test_replica_refuses_a_primary_signed_by_another_ca(pki: PKI) -> None:
    server_side, client_side = handshake(pki.foreign_server, [pki.ca.certificate],
                                         client_creator(pki, client=pki.replica))
    assert server_side.received == b""
    assert client_side.lost is not None


def test_replica_refuses_a_primary_whose_certificate_names_another_host(pki: PKI) -> None:
    # Signed by the right CA, but for "localhost" only: connecting to 127.0.0.1 must fail.
    server_side, client_side = handshake(pki.localhost_only, [pki.ca.certificate],
                                         client_creator(pki, client=pki.replica))
    assert server_side.received == b""
    assert client_side.lost is not None


def test_replica_accepts_a_dns_name_in_the_certificate(pki: PKI) -> None:
    server_side, _ = handshake(pki.localhost_only, [pki.ca.certificate],
                               client_creator(pki, host="localhost", client=pki.replica))
    assert server_side.received == b"ping"
    assert peer_of(server_side) == pki.replica.certificate


def test_peer_certificate_of_a_plain_connection_is_none() -> None:
    from twisted.internet.testing import StringTransport
    assert peer_certificate(SimpleNamespace(transport=StringTransport())) is None   # type: ignore[arg-type]


# -- the replica's policy -----------------------------------------------------------------------------
def test_other_hosts_get_the_fallback_policy(pki: PKI) -> None:
    fallback = RecordingPolicy()
    policy = ReplicaTLSPolicy("https://primary.test:8443", trust=trust_root([pki.ca.certificate]),
                              client=key_pair(pki.replica), fallback=fallback)
    assert policy.creatorForNetloc(b"upstream.test", 443) == "fallback creator"
    assert policy.creatorForNetloc(b"primary.test", 443) == "fallback creator"    # same host, other port
    assert fallback.asked == [(b"upstream.test", 443), (b"primary.test", 443)]
    creator = policy.creatorForNetloc(b"PRIMARY.test", 8443)
    assert creator != "fallback creator"
    assert policy.creatorForNetloc(b"primary.test", 8443) is creator          # built once


def test_replica_policy_from_config(pki: PKI, tmp_path: Path) -> None:
    cert, key = pki.replica.write(tmp_path, "replica")
    ca = pki.ca.write(tmp_path, "ca")
    config = Config(serverdir=tmp_path, listen=(), replica_cert=cert, replica_key=key, primary_ca=ca)
    policy = replica_tls_policy(config, "https://127.0.0.1:3141", RecordingPolicy(), None)
    assert policy is not None
    server_side, _ = handshake(pki.server, [pki.ca.certificate], policy.creatorForNetloc(b"127.0.0.1", 3141))
    assert peer_of(server_side) == pki.replica.certificate
    assert replica_tls_policy(Config(serverdir=tmp_path, listen=()), "https://x", RecordingPolicy(), None) is None
    with pytest.raises(TLSConfigError, match="need an https primary URL"):
        replica_tls_policy(config, "http://127.0.0.1:3141", RecordingPolicy(), None)


def test_default_primary_trust_is_the_environment_bundle(pki: PKI, tmp_path: Path) -> None:
    bundle = pki.ca.write(tmp_path, "bundle")
    cert, key = pki.replica.write(tmp_path, "replica")
    config = Config(serverdir=tmp_path, listen=(), replica_cert=cert, replica_key=key)
    policy = replica_tls_policy(config, "https://127.0.0.1:3141", RecordingPolicy(), str(bundle))
    assert policy is not None
    server_side, _ = handshake(pki.server, [pki.ca.certificate], policy.creatorForNetloc(b"127.0.0.1", 3141))
    assert server_side.received == b"ping"


# -- loading files ------------------------------------------------------------------------------------
def test_load_key_pair_with_chain(pki: PKI, tmp_path: Path) -> None:
    cert, key = pki.server.write(tmp_path, "server")
    cert.write_bytes(pki.server.cert_pem + pki.ca.cert_pem)
    loaded = load_key_pair(cert, key, "ssl-cert", "ssl-key")
    assert loaded.chain == [pki.server.certificate, pki.ca.certificate]
    assert len(loaded.openssl_extra_chain()) == 1


def test_mismatching_key_is_refused(pki: PKI, tmp_path: Path) -> None:
    cert, _ = pki.server.write(tmp_path, "server")
    _, other_key = pki.replica.write(tmp_path, "replica")
    with pytest.raises(TLSConfigError, match="--ssl-key .* is not the key of the certificate in --ssl-cert"):
        load_key_pair(cert, other_key, "ssl-cert", "ssl-key")


def test_unreadable_and_broken_files_are_refused(pki: PKI, tmp_path: Path) -> None:
    with pytest.raises(TLSConfigError, match="--ssl-client-ca: cannot read"):
        load_certificates(tmp_path / "missing.pem", "ssl-client-ca")
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not a certificate\n")
    with pytest.raises(TLSConfigError, match="no PEM certificate"):
        load_certificates(garbage, "primary-ca")
    cert, _ = pki.server.write(tmp_path, "server")
    with pytest.raises(TLSConfigError, match="no usable PEM private key"):
        load_key_pair(cert, garbage, "ssl-cert", "ssl-key")


def test_encrypted_key_is_refused(pki: PKI, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    cert, key = pki.server.write(tmp_path, "server")
    key.write_bytes(pki.server.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.BestAvailableEncryption(b"pw")))
    with pytest.raises(TLSConfigError, match="encrypted"):
        load_key_pair(cert, key, "ssl-cert", "ssl-key")


# -- listening ----------------------------------------------------------------------------------------
def test_tcp_listen_arguments() -> None:
    assert tcp_listen_arguments("tcp:3141:interface=localhost") == (3141, "localhost", 50)
    assert tcp_listen_arguments(r"tcp:4000:interface=\:\:1") == (4000, "::1", 50)
    assert tcp_listen_arguments("tcp:port=0:backlog=7") == (0, "", 7)
    assert tcp_listen_arguments("tcp:0") == (0, "", 50)
    assert tcp_listen_arguments("unix:/tmp/sock") is None
    assert tcp_listen_arguments("ssl:443:privateKey=k.pem") is None
    with pytest.raises(TLSConfigError, match="unknown arguments colour"):
        tcp_listen_arguments("tcp:0:colour=blue")


def test_tls_listen_endpoint_and_scheme(pki: PKI) -> None:
    options = server_tls_options(key_pair(pki.server), [pki.ca.certificate])
    reactor = MemoryReactor()
    endpoint = tls_listen_endpoint(reactor, "tcp:0:interface=127.0.0.1", options)
    assert isinstance(endpoint, SSL4ServerEndpoint)
    endpoint.listen(object())
    port, _factory, context_factory, backlog, interface = reactor.sslServers[0]
    assert (port, context_factory, backlog, interface) == (0, options, 50, "127.0.0.1")
    assert not isinstance(tls_listen_endpoint(reactor, "tcp:0", None), SSL4ServerEndpoint)
    assert not isinstance(tls_listen_endpoint(reactor, "unix:/tmp/devpitx.sock", options), SSL4ServerEndpoint)
    assert listen_scheme("tcp:0", options) == "https"
    assert listen_scheme("tcp:0", None) == "http"
    assert listen_scheme("ssl:0:privateKey=k.pem", None) == "https"
    assert listen_scheme("unix:/tmp/s", options) == "http"


def test_listening_tls_options_from_config(pki: PKI, tmp_path: Path) -> None:
    cert, key = pki.server.write(tmp_path, "server")
    ca = pki.ca.write(tmp_path, "ca")
    assert listening_tls_options(Config(serverdir=tmp_path, listen=("tcp:0",))) is None
    options = listening_tls_options(Config(serverdir=tmp_path, listen=("tcp:0",), ssl_cert=cert, ssl_key=key,
                                           ssl_client_ca=ca))
    assert isinstance(options, ssl.CertificateOptions)
    assert options.verify and not options.requireCertificate
    with pytest.raises(TLSConfigError, match="unknown arguments"):
        listening_tls_options(Config(serverdir=tmp_path, listen=("tcp:0:bogus=1",), ssl_cert=cert, ssl_key=key))
