"""Test PKI for TLS tests: CAs, server and client certificates made with ``cryptography``,
and an in-memory TLS connection (twisted.test.iosim) between a server and a client protocol.

EC P-256 keys: generating them takes microseconds, RSA would take a noticeable part of a test.
"""
from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet.protocol import ClientFactory, Factory, Protocol, ServerFactory
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test.iosim import IOPump, connectedServerAndClient

_VALID = datetime.timedelta(days=30)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, as objects and as PEM."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        """``<name>.pem`` and ``<name>.key`` in ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
        cert_path.write_bytes(self.cert_pem)
        key_path.write_bytes(self.key_pem)
        key_path.chmod(0o600)
        return cert_path, key_path


class CertificateAuthority:
    def __init__(self, common_name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        start = _now()
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + _VALID)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def write(self, directory: Path, name: str) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{name}.pem"
        path.write_bytes(self.cert_pem)
        return path

    def issue(self, common_name: str, *, dns_names: Sequence[str] = (), ip_addresses: Sequence[str] = (),
              client: bool = False) -> Issued:
        """A leaf certificate: a server certificate for the names given, or a client certificate."""
        key = ec.generate_private_key(ec.SECP256R1())
        start = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name)).issuer_name(self.certificate.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + _VALID)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client
                                                  else ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                           critical=False)
        )
        names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(address)) for address in ip_addresses]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return Issued(builder.sign(self.key, hashes.SHA256()), key)


# -- an in-memory TLS connection ----------------------------------------------------------------------
class Recorder(Protocol):
    """Collects what arrives; ``lost`` is the reason the connection ended, once it did."""

    def __init__(self, send_on_connect: bytes = b"") -> None:
        self.received = b""
        self.lost: Failure | None = None
        self._send = send_on_connect

    def connectionMade(self) -> None:
        if self._send and self.transport is not None:
            self.transport.write(self._send)      # TLS buffers it until the handshake is done

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = reason


def tls_connection(server_options: Any, client_creator: Any, server: Protocol | Factory[Any],
                   client_protocol: Protocol) -> TLSPump:
    """Connect ``client_protocol`` to ``server`` (a protocol, or a factory such as a Site)
    through real TLS in memory and pump until nothing moves."""
    clock = Clock()      # TLS transports send small writes together on the next "reactor" turn
    wrapped = server if isinstance(server, Factory) else ServerFactory.forProtocol(lambda: server)
    server_factory = TLSMemoryBIOFactory(server_options, False, wrapped, clock=clock)
    client_factory = TLSMemoryBIOFactory(client_creator, True, ClientFactory.forProtocol(lambda: client_protocol),
                                         clock=clock)
    _client, _server, pump = connectedServerAndClient(lambda: server_factory.buildProtocol(None),
                                                      lambda: client_factory.buildProtocol(None), clock=clock)
    settle(pump, clock)
    return TLSPump(pump, clock)


def settle(pump: IOPump, clock: Clock, turns: int = 20) -> None:
    for _ in range(turns):
        clock.advance(0)
        pump.flush()


@dataclass(frozen=True)
class TLSPump:
    pump: IOPump
    clock: Clock

    def settle(self) -> None:
        settle(self.pump, self.clock)
