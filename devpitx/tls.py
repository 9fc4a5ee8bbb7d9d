"""TLS for replication (DESIGN.md §6): the primary's listening side and the replica's client side.

* :func:`load_key_pair` / :func:`load_certificates` read PEM files once at
  start-up; anything unreadable, unparsable or a key that does not belong to
  its certificate raises :class:`TLSConfigError`, shown as ``fatal: ...``.
* :func:`server_tls_options`: what the server listens with for ``--ssl-cert``
  and ``--ssl-key``; with ``--ssl-client-ca`` a client *may* present a
  certificate, which OpenSSL verifies against that CA during the handshake
  (a certificate from another CA fails the handshake). Not requiring one
  keeps every other endpoint usable by pip and browsers; the changelog
  route asks :func:`peer_certificate` instead.
* :class:`ReplicaTLSPolicy`: the replica's HTTPS policy. Connections to the
  primary's host and port verify the primary's certificate against
  ``--primary-ca`` (default: the CA bundle rules of mirror/upstream.py, else
  the system's) and its host name with service-identity, and present the
  replica's certificate; other hosts (mirror upstreams) get the normal
  policy and never see the replica's certificate.
* :func:`tls_listen_endpoint`: a plain ``tcp:`` listen string turned into
  an ``SSL4ServerEndpoint`` with the same port, interface and backlog.

Protocol versions below TLS 1.2 are refused on both sides.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from OpenSSL import crypto
from twisted.internet import ssl
from twisted.internet._sslverify import (
    IOpenSSLTrustRoot,  # the type of trustRootFromCertificates' result
)
from twisted.internet.endpoints import SSL4ServerEndpoint, serverFromString
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    ISSLTransport,
    IStreamServerEndpoint,
)
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.web.iweb import IPolicyForHTTPS, IRequest
from zope.interface import implementer

from devpitx.config import Config, ConfigError

MINIMUM_TLS_VERSION = ssl.TLSVersion.TLSv1_2
CLIENT_CERTIFICATE_REQUIRED_MESSAGE = "replication requires a client certificate signed by the configured CA"
# Twisted's default for tcp: endpoints.
_DEFAULT_BACKLOG = 50


class TLSConfigError(ConfigError):
    """A certificate or key file that cannot be used; fatal at start-up."""


# -- loading PEM files ---------------------------------------------------------------------------
def _read(path: Path, option: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TLSConfigError(f"--{option}: cannot read {str(path)!r}: {exc.strerror or exc}") from None


def load_certificates(path: Path, option: str) -> list[x509.Certificate]:
    """Every certificate in the PEM file at ``path`` (at least one)."""
    data = _read(path, option)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        raise TLSConfigError(f"--{option}: no PEM certificate in {str(path)!r}")
    return certificates


def _load_private_key(path: Path, option: str) -> PrivateKeyTypes:
    data = _read(path, option)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TLSConfigError(f"--{option}: the key in {str(path)!r} is encrypted; "
                             "give an unencrypted key (protect it with file permissions)") from None
    except (ValueError, crypto.Error):
        raise TLSConfigError(f"--{option}: no usable PEM private key in {str(path)!r}") from None


def _public_bytes(key: Any) -> bytes:
    return bytes(key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


class KeyPair:
    """A certificate chain (leaf first) and the private key of its leaf, checked to match."""

    def __init__(self, chain: Sequence[x509.Certificate], key: PrivateKeyTypes) -> None:
        self.chain = list(chain)
        self.key = key

    @property
    def certificate(self) -> x509.Certificate:
        return self.chain[0]

    def openssl_certificate(self) -> crypto.X509:
        return crypto.X509.from_cryptography(self.certificate)

    def openssl_key(self) -> crypto.PKey:
        return crypto.PKey.from_cryptography_key(self.key)     # type: ignore[arg-type]

    def openssl_extra_chain(self) -> list[crypto.X509]:
        return [crypto.X509.from_cryptography(certificate) for certificate in self.chain[1:]]

    def private_certificate(self) -> ssl.PrivateCertificate:
        """The leaf as Twisted's client certificate (optionsForClientTLS)."""
        certificate: ssl.PrivateCertificate = ssl.PrivateCertificate.fromCertificateAndKeyPair(
            ssl.Certificate(self.openssl_certificate()), ssl.KeyPair(self.openssl_key()))
        return certificate


def load_key_pair(cert_path: Path, key_path: Path, cert_option: str, key_option: str) -> KeyPair:
    """The chain in ``cert_path`` (leaf first) and the key in ``key_path``, which must be the leaf's."""
    chain = load_certificates(cert_path, cert_option)
    key = _load_private_key(key_path, key_option)
    try:
        matches = _public_bytes(chain[0].public_key()) == _public_bytes(key.public_key())
    except (AttributeError, ValueError, TypeError):
        matches = False
    if not matches:
        raise TLSConfigError(f"--{key_option} {str(key_path)!r} is not the key of the certificate "
                             f"in --{cert_option} {str(cert_path)!r}")
    return KeyPair(chain, key)


def _openssl(certificates: Sequence[x509.Certificate]) -> list[crypto.X509]:
    return [crypto.X509.from_cryptography(certificate) for certificate in certificates]


def trust_root(certificates: Sequence[x509.Certificate]) -> IOpenSSLTrustRoot:
    root: IOpenSSLTrustRoot = ssl.trustRootFromCertificates([ssl.Certificate(c) for c in _openssl(certificates)])
    return root


# -- the server side -----------------------------------------------------------------------------
def server_tls_options(server: KeyPair, client_cas: Sequence[x509.Certificate] = ()) -> ssl.CertificateOptions:
    """Options for the listening side; ``client_cas``: verify client certificates against these.

    ``verify`` with ``caCerts`` (not ``trustRoot``, which would also require a certificate):
    a client certificate is optional, but one that is presented must chain to ``client_cas``
    or the handshake fails.
    """
    options: dict[str, Any] = {}
    if client_cas:
        options.update(verify=True, caCerts=_openssl(client_cas), requireCertificate=False)
    return ssl.CertificateOptions(privateKey=server.openssl_key(), certificate=server.openssl_certificate(),
                                  extraCertChain=server.openssl_extra_chain(), raiseMinimumTo=MINIMUM_TLS_VERSION,
                                  **options)


def peer_certificate(request: IRequest) -> x509.Certificate | None:
    """The client certificate of the request's TLS connection, verified during the handshake;
    None on plain connections and TLS connections without a (verified) certificate."""
    channel = getattr(request, "channel", None)
    transport = getattr(channel, "transport", None) or getattr(request, "transport", None)
    # Listening ports started with TLS provide ISSLTransport; a TLSMemoryBIOProtocol (a TLS
    # factory wrapped around the site, as in-process tests do) does not declare it.
    if not (ISSLTransport.providedBy(transport) or isinstance(transport, TLSMemoryBIOProtocol)):
        return None
    connection: Any = cast(Any, transport).getHandle()       # the OpenSSL.SSL.Connection
    # Verified already: with VERIFY_PEER a certificate that does not chain to the client CA
    # ends the handshake, so a connection that carries requests has a good one or none.
    certificate: x509.Certificate | None = connection.get_peer_certificate(as_cryptography=True)
    return certificate


_UNESCAPED_COLON = re.compile(r"(?<!\\):")


def tcp_listen_arguments(description: str) -> tuple[int, str, int] | None:
    """``(port, interface, backlog)`` of a plain ``tcp:`` endpoint string, None for other types."""
    parts = _UNESCAPED_COLON.split(description)
    if parts[0].strip().lower() != "tcp":
        return None
    positional: list[str] = []
    keywords: dict[str, str] = {}
    for part in parts[1:]:
        value = re.sub(r"\\(.)", r"\1", part)
        name, equals, rest = value.partition("=")
        if equals and "\\=" not in part:
            keywords[name] = rest
        else:
            positional.append(value)
    names = ("port", "interface", "backlog")
    for name, value in zip(names, positional):
        keywords.setdefault(name, value)
    unknown = set(keywords) - set(names)
    if unknown or "port" not in keywords:
        raise TLSConfigError(f"cannot listen with TLS on {description!r}: "
                             + (f"unknown arguments {', '.join(sorted(unknown))}" if unknown else "no port"))
    try:
        return int(keywords["port"]), keywords.get("interface", ""), int(keywords.get("backlog", _DEFAULT_BACKLOG))
    except ValueError:
        raise TLSConfigError(f"cannot listen with TLS on {description!r}: port and backlog must be numbers") \
            from None


def tls_listen_endpoint(reactor: Any, description: str,
                        options: ssl.CertificateOptions | None) -> IStreamServerEndpoint:
    """The endpoint for one ``--listen`` value: with ``options``, a plain ``tcp:`` endpoint
    listens with TLS on the same port and interface; anything else (``ssl:``, ``unix:``, ...)
    is left to Twisted's parser."""
    arguments = tcp_listen_arguments(description) if options is not None else None
    if arguments is None:
        return serverFromString(reactor, description)     # type: ignore[no-any-return]
    port, interface, backlog = arguments
    return SSL4ServerEndpoint(reactor, port, options, backlog=backlog, interface=interface)


def listen_scheme(description: str, options: ssl.CertificateOptions | None) -> str:
    """``https`` for what :func:`tls_listen_endpoint` makes TLS and for ``ssl:``/``tls:`` strings."""
    kind = description.split(":", 1)[0].strip().lower()
    return "https" if kind in ("ssl", "tls") or (kind == "tcp" and options is not None) else "http"


# -- the replica side ----------------------------------------------------------------------------
def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return (parts.hostname or "").lower(), parts.port or 443


@implementer(IPolicyForHTTPS)
class ReplicaTLSPolicy:
    """HTTPS policy of a replica's HTTP client: special for the primary, ``fallback`` for others.

    Only the primary's exact host and port get the replica's certificate: a mirror upstream,
    or a file redirect to another host, must never see it.
    """

    def __init__(self, primary_url: str, *, trust: IOpenSSLTrustRoot, client: KeyPair | None,
                 fallback: IPolicyForHTTPS) -> None:
        self._primary = _host_port(primary_url)
        self._trust = trust
        self._client = client
        self._fallback = fallback
        self._creator: IOpenSSLClientConnectionCreator | None = None

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        host = hostname.decode("ascii", "replace").strip("[]").lower()
        if (host, port) != self._primary:
            return self._fallback.creatorForNetloc(hostname, port)
        if self._creator is None:      # built once: it holds the OpenSSL context (and CA store)
            extra: dict[str, Any] = {"raiseMinimumTo": MINIMUM_TLS_VERSION}
            if self._client is not None and self._client.chain[1:]:
                extra["extraCertChain"] = self._client.openssl_extra_chain()
            self._creator = ssl.optionsForClientTLS(
                host, trustRoot=self._trust,
                clientCertificate=self._client.private_certificate() if self._client is not None else None,
                extraCertificateOptions=extra)
        return self._creator


def default_primary_trust(ca_bundle: str | None) -> IOpenSSLTrustRoot:
    """Without ``--primary-ca``: the bundle named by the environment (mirror/upstream.py), else the system's."""
    if ca_bundle is None:
        system: IOpenSSLTrustRoot = ssl.platformTrust()
        return system
    return trust_root(load_certificates(Path(ca_bundle), "primary-ca (from REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE)"))


# -- from the configuration (cli/tap.py) ------------------------------------------------------------
def listening_tls_options(config: Config) -> ssl.CertificateOptions | None:
    """``--ssl-cert``/``--ssl-key`` (and ``--ssl-client-ca``) loaded and checked; None without them."""
    if config.ssl_cert is None or config.ssl_key is None:
        return None
    for description in config.listen:
        tcp_listen_arguments(description)        # refuses tcp: strings we could not listen on with TLS
    server = load_key_pair(config.ssl_cert, config.ssl_key, "ssl-cert", "ssl-key")
    client_cas = load_certificates(config.ssl_client_ca, "ssl-client-ca") if config.ssl_client_ca else []
    return server_tls_options(server, client_cas)


def replica_tls_policy(config: Config, primary_url: str, fallback: IPolicyForHTTPS,
                       ca_bundle: str | None) -> ReplicaTLSPolicy | None:
    """The replica's policy when ``--replica-cert`` or ``--primary-ca`` is given, else None
    (an https primary is then verified like any other host). ``ca_bundle``: the environment's
    bundle (mirror/upstream.py ``ca_bundle_path``), the default trust without ``--primary-ca``."""
    if config.replica_cert is None and config.primary_ca is None:
        return None
    if urlsplit(primary_url).scheme != "https":
        raise TLSConfigError(f"--replica-cert and --primary-ca need an https primary URL, got {primary_url!r}")
    client = None
    if config.replica_cert is not None and config.replica_key is not None:
        client = load_key_pair(config.replica_cert, config.replica_key, "replica-cert", "replica-key")
    if config.primary_ca is not None:
        trust = trust_root(load_certificates(config.primary_ca, "primary-ca"))
    else:
        trust = default_primary_trust(ca_bundle)
    return ReplicaTLSPolicy(primary_url, trust=trust, client=client, fallback=fallback)
