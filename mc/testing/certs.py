"""TLS certificates for tests: ECDSA P-256, SAN 127.0.0.1 and localhost,
valid 10 days (under the 14 a browser accepts for pinning a certificate by
its hash, ``serverCertificateHashes``): self-signed ones, and a small
``CertificateAuthority`` that issues server and client certificates."""

import datetime
import hashlib
import ipaddress
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class SelfSigned:
    cert_path: str
    key_path: str
    sha256: bytes  # of the DER certificate, as a browser pins it


def certificate_sha256(cert_path):
    """SHA-256 of the DER form of the PEM certificate at ``cert_path``."""
    with open(cert_path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()


def _builder(subject, issuer, public_key, days):
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
    )


_LOOPBACK = x509.SubjectAlternativeName([
    x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])


def write_self_signed(directory, name="mc", days=10):
    """Write ``<name>-cert.pem`` and ``<name>-key.pem`` (mode 0600) into
    ``directory``. The certificate is its own trust anchor, so a client can
    also use it as its CA file."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    cert = (_builder(subject, subject, key.public_key(), days)
            .add_extension(_LOOPBACK, critical=False)
            .sign(key, hashes.SHA256()))
    return _write(directory, name, cert, key)


def _write(directory, name, cert, key):
    cert_path = os.path.join(str(directory), f"{name}-cert.pem")
    key_path = os.path.join(str(directory), f"{name}-key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    der = cert.public_bytes(serialization.Encoding.DER)
    return SelfSigned(cert_path, key_path, hashlib.sha256(der).digest())


class CertificateAuthority:
    """A root CA written to ``<name>-cert.pem`` in ``directory`` (``cert_path``
    is the CA file clients and servers trust) that issues certificates good
    for a server on loopback and for a client."""

    def __init__(self, directory, name="test-ca", days=10):
        self.directory = str(directory)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (_builder(self._name, self._name, self._key.public_key(), days)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=False, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                .sign(self._key, hashes.SHA256()))
        self.cert_path = _write(self.directory, name, cert, self._key).cert_path

    def issue(self, name, days=10):
        """A certificate for ``name`` (SAN 127.0.0.1 and localhost, server and
        client use) and its key, written next to the CA's."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (_builder(subject, self._name, key.public_key(), days)
                .add_extension(_LOOPBACK, critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .sign(self._key, hashes.SHA256()))
        return _write(self.directory, name, cert, key)
