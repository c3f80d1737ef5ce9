"""The pool's small PKI: a CA, node/user/controller certificates, and the name + role read back from a peer's one.

Encoding: subject CN = the name, subject OU = the role. Node and controller certificates carry SAN DNS names (and
IPs) and serverAuth+clientAuth (an agent's certificate also serves its OIP port); user certificates clientAuth only.
Keys are ECDSA P-256, written 0600 through a temporary file and a rename.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
LEAF_DAYS = 825


class PkiError(ValueError):
    """A CA directory or certificate that cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _save(directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Issued:
    key_path, cert_path = directory / f"{stem}.key", directory / f"{stem}.pem"
    _write(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return Issued(cert_path, key_path)


def _subject(name: str, role: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role)])


def init_ca(directory: Path, name: str = "xpud pool CA") -> Issued:
    """Make ca.pem/ca.key in ``directory``; refuses to overwrite an existing CA."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if (directory / "ca.pem").exists() or (directory / "ca.key").exists():
        raise PkiError(f"{directory} already holds a CA (ca.pem/ca.key): remove it or choose another --dir")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256()))
    return _save(directory, "ca", cert, key)


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
        key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise PkiError(f"no usable CA in {directory} ({exc}): run `xpud certs init --dir {directory}` first") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{directory / 'ca.key'} is not an ECDSA key")
    return cert, key


def _sans(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(h for h in hosts if h):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def issue(directory: Path, stem: str, name: str, role: str, hosts: list[str] | None = None) -> Issued:
    """Issue ``stem``.pem/.key signed by the CA in ``directory``; with hosts it is a server+client certificate."""
    ca_cert, ca_key = _load_ca(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if hosts else [])
    builder = (x509.CertificateBuilder().subject_name(_subject(name, role)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName(_sans(hosts)), critical=False)
    return _save(directory, stem, builder.sign(ca_key, hashes.SHA256()), key)


def read_identity(pem: bytes) -> tuple[str, str]:
    """(name, role) from a verified peer certificate's subject CN and OU; PkiError if either is missing."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise PkiError(f"peer certificate is not PEM: {exc}") from None
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ou = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if not cn or not ou:
        raise PkiError("peer certificate lacks a CN (name) or an OU (role): issue it with `xpud certs issue`")
    return str(cn[0].value), str(ou[0].value)
