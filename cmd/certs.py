"""`siot cert`: a self-signed CA and a server certificate signed by it (the `cryptography`
library), for a LAN install without a public CA.

Why a CA and not one self-signed server certificate: clients then trust the CA once, and a
renewed or reissued server certificate (new names, new expiry) needs nothing changed on them.
The server certificate is also usable as a client certificate (both key usages), because with
`--tls-ca` the daemon presents it on its own connections to its broker.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KEY_MODE = 0o600
CA_DAYS = 3650


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)  # atomic: a reloading server never reads half a certificate


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _names(hosts: tuple[str, ...]) -> list[x509.GeneralName]:
    wanted = ["localhost", "127.0.0.1", "::1", socket.gethostname(), *hosts]
    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in wanted:
        if not host or host in seen:
            continue
        seen.add(host)
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _load_or_make_ca(
    out_dir: Path, now: datetime.datetime
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    ca_cert_path, ca_key_path = out_dir / "ca.pem", out_dir / "ca.key"
    if ca_cert_path.exists() and ca_key_path.exists():
        key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{ca_key_path} is not an EC key made by siot cert")
        return key, x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"siot CA {socket.gethostname()}")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(ca_key_path, _key_pem(key), KEY_MODE)
    _write(ca_cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def make_certificates(out_dir: Path, hosts: tuple[str, ...], days: int) -> list[Path]:
    """Write (or keep) the CA and write a new server certificate and key; return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key, ca_cert = _load_or_make_ca(out_dir, now)
    key = ec.generate_private_key(ec.SECP256R1())
    names = _names(hosts)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, socket.gethostname() or "siot")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key, server_cert = out_dir / "server.key", out_dir / "server.pem"
    _write(server_key, _key_pem(key), KEY_MODE)
    _write(server_cert, cert.public_bytes(serialization.Encoding.PEM))
    return [out_dir / "ca.pem", out_dir / "ca.key", server_cert, server_key]
