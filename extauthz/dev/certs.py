"""A development CA and certificates (with `cryptography`), for the mTLS listener of the dev
stack, `extauthz dev certs` and the tests. EC P-256 keys, RFC 5280 extensions that strict
verifiers (cryptography's own, Envoy's BoringSSL) accept. Not a production PKI.

<run_dir>/dev-ca/
    ca.pem, ca.key           the CA (key 0600)
    server.pem, server.key   Envoy's listener certificate (localhost, 127.0.0.1)
    <name>.pem, <name>.key   client certificates issued by `issue_client`
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from extauthz.clock import Clock, system_clock

Issued = tuple[ec.EllipticCurvePrivateKey, x509.Certificate]


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "extauthz dev"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _validity(clock: Clock, days: int) -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.fromtimestamp(clock(), datetime.UTC)
    return now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)


def new_ca(
    common_name: str = "extauthz dev CA", days: int = 3650, clock: Clock = system_clock
) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    not_before, not_after = _validity(clock, days)
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue(
    ca: Issued,
    common_name: str,
    *,
    uris: tuple[str, ...] = (),
    dns: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
    server: bool = False,
    days: int = 365,
    clock: Clock = system_clock,
) -> Issued:
    """A leaf certificate signed by `ca`: a client certificate, or a server one (`server`)."""
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    not_before, not_after = _validity(clock, days)
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file readable by its owner only (created 0600, replaced atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)


def write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


class DevCA:
    """The dev CA under `directory`, created on first use."""

    def __init__(self, directory: Path, clock: Clock = system_clock) -> None:
        self.dir = directory
        self._clock = clock

    @property
    def ca_file(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.dir / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    def ensure(self) -> None:
        """Create the CA and Envoy's server certificate if they are missing."""
        if not (self.ca_file.exists() and (self.dir / "ca.key").exists()):
            key, cert = new_ca(clock=self._clock)
            write_private(self.dir / "ca.key", key_pem(key))
            write_public(self.ca_file, cert_pem(cert))
        if not (self.server_cert.exists() and self.server_key.exists()):
            self.issue_server()

    def issue_server(self, days: int = 365) -> x509.Certificate:
        """A new certificate for Envoy's listeners (localhost, 127.0.0.1), replacing the one in
        server.pem/server.key (a rotation: Envoy gets it by SDS, extauthz.edge.render)."""
        key, cert = issue(
            self._ca(),
            "localhost",
            dns=("localhost",),
            ips=("127.0.0.1",),
            server=True,
            days=days,
            clock=self._clock,
        )
        write_private(self.server_key, key_pem(key))
        write_public(self.server_cert, cert_pem(cert))
        return cert

    def _ca(self) -> Issued:
        key = serialization.load_pem_private_key((self.dir / "ca.key").read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key, x509.load_pem_x509_certificate(self.ca_file.read_bytes())

    def issue_client(
        self, name: str, uri: str = "", dns: str = "", days: int = 365
    ) -> tuple[Path, Path]:
        """A client certificate named by a URI SAN (e.g. spiffe://…) and/or a DNS SAN;
        (certificate file, key file)."""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name) or name in ("ca", "server"):
            raise ValueError(f"not a usable certificate name: {name!r}")
        self.ensure()
        key, cert = issue(
            self._ca(),
            name,
            uris=(uri,) if uri else (),
            dns=(dns,) if dns else (),
            days=days,
            clock=self._clock,
        )
        cert_file, key_file = self.dir / f"{name}.pem", self.dir / f"{name}.key"
        write_private(key_file, key_pem(key))
        write_public(cert_file, cert_pem(cert))
        return cert_file, key_file
