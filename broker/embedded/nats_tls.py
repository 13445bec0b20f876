"""TLS for the embedded stack's nats-server: a private CA and a server certificate.

``ensure(data_dir)`` keeps, under ``<data_dir>/tls/``::

    ca.crt       the stack's CA (public: clients verify the server with it, JOBQ_NATS_CA)
    ca.key       its private key (mode 0600; never leaves the data dir)
    server.crt   nats-server's certificate, signed by the CA: SANs IP 127.0.0.1, DNS localhost
    server.key   its private key (mode 0600)

and reuses them on the next start while they still fit: the CA and the server certificate are
both valid for at least ``RENEW_BEFORE`` more, the server certificate is the CA's and carries
exactly the SANs asked for. Otherwise the server certificate (and, when the CA itself no longer
fits, the CA) is issued again; clients read ``ca.crt`` at every connect, so a new one is picked up
by every process the next time it starts.

Clients are not asked for certificates (no mTLS): who may do what on NATS is decided by the NATS
users of each role, which TLS then protects in transit. ``tls_block(..., verify_clients=True)``
makes nats-server require a client certificate signed by the CA, for operators who want both.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from broker import contract, settings

TLS_DIR = "tls"
CA_VALIDITY = dt.timedelta(days=3650)
SERVER_VALIDITY = dt.timedelta(days=365)
RENEW_BEFORE = dt.timedelta(days=30)
"""A certificate with less validity left than this is issued again at the next start."""
DEFAULT_HOSTS = ("127.0.0.1", "localhost")
HANDSHAKE_TIMEOUT_S = 5.0
"""nats-server's TLS handshake timeout (its default, 0.5 s, is too short on a loaded machine)."""
CaPair = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


@dataclasses.dataclass(frozen=True, slots=True)
class TlsFiles:
    """The PEM files of one stack's NATS TLS."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def at(cls, directory: Path) -> TlsFiles:
        return cls(
            directory=directory,
            ca_cert=directory / "ca.crt",
            ca_key=directory / "ca.key",
            server_cert=directory / "server.crt",
            server_key=directory / "server.key",
        )


def ensure(data_dir: Path, *, hosts: Iterable[str] = (), now: dt.datetime | None = None) -> TlsFiles:
    """The stack's CA and server certificate for ``DEFAULT_HOSTS`` plus ``hosts`` (IP addresses
    or DNS names), issued now unless the files already there still fit (module docstring)."""
    now = now or dt.datetime.now(dt.UTC)
    files = TlsFiles.at(data_dir / TLS_DIR)
    files.directory.mkdir(parents=True, exist_ok=True, mode=0o755)  # pods of another user read ca.crt
    wanted = _sans(DEFAULT_HOSTS, hosts)
    ca = _load_fitting_ca(files, now)
    fresh_ca = ca is None
    if ca is None:
        ca = _new_ca(files, now)
    if fresh_ca or not _server_fits(files, ca[0], wanted, now):
        _new_server(files, ca, wanted, now)
    return files


def tls_block(
    files: TlsFiles, *, verify_clients: bool = False, timeout_s: float = HANDSHAKE_TIMEOUT_S
) -> str:
    """The nats-server configuration block that serves ``files`` to clients."""
    lines = [
        "tls {",
        f'  cert_file: "{files.server_cert}"',
        f'  key_file: "{files.server_key}"',
        f'  ca_file: "{files.ca_cert}"',
        f"  timeout: {timeout_s:g}",
    ]
    if verify_clients:
        lines.append("  verify: true")
    return "\n".join([*lines, "}"])


# --- issuing ---------------------------------------------------------------------------------


def _sans(*groups: Iterable[str]) -> frozenset[x509.GeneralName]:
    names: set[x509.GeneralName] = set()
    for host in (h.strip() for group in groups for h in group):
        if not host:
            continue
        try:
            names.add(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.add(x509.DNSName(host))
    return frozenset(names)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tmp.replace(path)


def _new_ca(files: TlsFiles, now: dt.datetime) -> CaPair:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"jobq embedded NATS CA {now:%Y%m%d%H%M%S}")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + CA_VALIDITY)
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
    _write_key(files.ca_key, key)
    _write_cert(files.ca_cert, cert)
    return cert, key


def _new_server(files: TlsFiles, ca: CaPair, sans: frozenset[x509.GeneralName], now: dt.datetime) -> None:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jobq nats-server")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + SERVER_VALIDITY, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sorted(sans, key=str)), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(files.server_key, key)
    _write_cert(files.server_cert, cert)


# --- reusing ---------------------------------------------------------------------------------


def _fresh(cert: x509.Certificate, now: dt.datetime) -> bool:
    return cert.not_valid_before_utc <= now and cert.not_valid_after_utc - now > RENEW_BEFORE


def _load_fitting_ca(files: TlsFiles, now: dt.datetime) -> CaPair | None:
    try:
        cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    except (OSError, ValueError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not _fresh(cert, now):
        return None
    if cert.public_key() != key.public_key():
        return None
    return cert, key


def _server_fits(
    files: TlsFiles, ca_cert: x509.Certificate, sans: frozenset[x509.GeneralName], now: dt.datetime
) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
        key = serialization.load_pem_private_key(files.server_key.read_bytes(), password=None)
        have = frozenset(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        cert.verify_directly_issued_by(ca_cert)
    except (OSError, ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
        return False
    return have == sans and _fresh(cert, now) and cert.public_key() == key.public_key()


# --- who uses them ---------------------------------------------------------------------------

ENV_TLS = "JOBQ_NATS_TLS"
"""``on`` (also when unset or empty) or ``off``: whether ``jobq up``/``jobq demo`` run NATS with TLS."""


def enabled_from_env(environ: Mapping[str, str] | None = None) -> bool:
    return settings.switch(os.environ if environ is None else environ, ENV_TLS,
                           on_means="NATS requires TLS, with a CA generated in <data dir>/tls")


def client_options(files: TlsFiles | None) -> dict[str, Any]:
    """nats.connect() options of a client that trusts ``files``' CA ({} when None)."""
    if files is None:
        return {}
    return {"tls": contract.client_tls_context(ca_file=str(files.ca_cert))}
