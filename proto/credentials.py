"""TLS and mutual TLS for the control plane's gRPC (the agent link and the admin API).

A controller given a CA requires every agent and admin client to present a
certificate signed by it (mTLS); given only a certificate and key it serves TLS.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import grpc


class CredentialsError(ValueError):
    """A certificate or key that cannot be used; the message names the file."""


@dataclass(frozen=True)
class TlsFiles:
    ca: str | None = None  # CA that signs the peer's certificate
    cert: str | None = None  # our certificate chain (PEM)
    key: str | None = None  # our private key (PEM)

    @property
    def enabled(self) -> bool:
        return bool(self.ca or self.cert or self.key)

    @classmethod
    def from_env(cls, ca: str | None = None, cert: str | None = None, key: str | None = None) -> TlsFiles:
        """Flags first, then XPUD_TLS_CA / XPUD_TLS_CERT / XPUD_TLS_KEY."""
        return cls(ca or os.environ.get("XPUD_TLS_CA") or None, cert or os.environ.get("XPUD_TLS_CERT") or None,
                   key or os.environ.get("XPUD_TLS_KEY") or None)


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address, maybe bracketed) is this machine's loopback only."""
    import ipaddress

    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


SETUP_HINT = ("set TLS up: `xpud certs init --dir pki` (CA + controller certificate), `xpud certs issue --dir pki "
              "--node NAME` per agent, then --tls-ca, --tls-cert and --tls-key")


def _read(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CredentialsError(f"cannot read the {what} {path!r}: {exc.strerror}") from None
    if b"-----BEGIN" not in data:
        raise CredentialsError(f"the {what} {path!r} is not PEM (no -----BEGIN line)")
    marker = b"PRIVATE KEY-----" if what == "private key" else b"-----BEGIN CERTIFICATE-----"
    if marker not in data:
        raise CredentialsError(f"the {what} {path!r} holds no {marker.decode().strip('-')} block")
    return data


def channel_credentials(tls: TlsFiles) -> grpc.ChannelCredentials:
    if bool(tls.cert) != bool(tls.key):
        raise CredentialsError("a client certificate needs its key and the other way round (--tls-cert, --tls-key)")
    return grpc.ssl_channel_credentials(root_certificates=_read(tls.ca, "CA certificate"),
                                        private_key=_read(tls.key, "private key"),
                                        certificate_chain=_read(tls.cert, "certificate"))


class ServerCertificates:
    """Server credentials whose certificate, key and CA can be replaced while serving (SIGHUP): gRPC asks for
    the current ones at each new handshake. One per port: each port takes a replacement once."""

    def __init__(self, tls: TlsFiles) -> None:
        self.tls = tls
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self.credentials = grpc.dynamic_ssl_server_credentials(
            self.configuration(tls), self._fetch, require_client_authentication=tls.ca is not None)

    @staticmethod
    def configuration(tls: TlsFiles) -> grpc.ServerCertificateConfiguration:
        if not tls.cert or not tls.key:
            raise CredentialsError("serving TLS needs both a certificate and its key (--tls-cert and --tls-key)")
        chain, key = _read(tls.cert, "certificate"), _read(tls.key, "private key")
        assert chain is not None and key is not None
        root = _read(tls.ca, "CA certificate")
        return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=root)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        pending, self._pending = self._pending, None  # None: keep what the port has
        return pending

    def replace(self, tls: TlsFiles) -> None:
        """Serve `tls`'s files from the next handshake on; CredentialsError (and nothing changes) if unusable."""
        if (tls.ca is None) != (self.tls.ca is None):
            raise CredentialsError("adding or removing the CA (--tls-ca) needs a restart")
        self._pending = self.configuration(tls)
        self.tls = tls
