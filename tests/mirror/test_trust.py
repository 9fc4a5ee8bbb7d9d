"""The TLS policy of the mirror's HTTP client: built at the first HTTPS connection, from the
CA bundle named in the environment when there is one."""
from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator

from devpitx.mirror import upstream


def self_signed_pem(common_name: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    return certificate.public_bytes(serialization.Encoding.PEM)


def test_policy_is_built_at_the_first_connection_only(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[Any] = []
    real = upstream.trust_policy

    def counting() -> Any:
        built.append(1)
        return real()

    monkeypatch.setattr(upstream, "trust_policy", counting)
    policy = upstream.LazyTrustPolicy()
    assert built == []
    creator = policy.creatorForNetloc(b"upstream.example", 443)
    assert IOpenSSLClientConnectionCreator.providedBy(creator)
    policy.creatorForNetloc(b"other.example", 443)
    assert built == [1]


def test_bundle_from_the_environment_is_the_trust_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = tmp_path / "bundle.pem"
    pems = [self_signed_pem("first test CA"), self_signed_pem("second test CA")]
    bundle.write_bytes(b"\n".join(pems))
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    loaded: list[list[Any]] = []
    real = upstream.ssl.trustRootFromCertificates

    def recording(certificates: list[Any]) -> Any:
        loaded.append(certificates)
        return real(certificates)

    monkeypatch.setattr(upstream.ssl, "trustRootFromCertificates", recording)
    upstream.trust_policy()
    assert [[c.dumpPEM() for c in certificates] for certificates in loaded] == [pems]


def test_without_a_bundle_the_system_trust_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.setattr(upstream.ssl, "trustRootFromCertificates",
                        lambda certificates: pytest.fail("no bundle should be read"))
    assert upstream.trust_policy() is not None
