"""TLS towards NATS, read from a jobq process's environment.

``JOBQ_NATS_CA`` names a PEM CA bundle: the process then verifies the NATS server's certificate
against it (and only it), whatever the URL's scheme (``nats://`` or ``tls://``): nats-py needs an
SSL context to speak TLS to a server that requires it. ``JOBQ_NATS_CERT`` and ``JOBQ_NATS_KEY``
add a client certificate, for a server that asks for one (mTLS; jobq's embedded server does not).
The CA is public and may be handed to pods; the client key is not.

Without ``JOBQ_NATS_CA`` a server that requires TLS is verified against the system's CAs (nats-py's
default), which refuse a private CA: the connect fails with "certificate verify failed".
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

from broker.contract import names

POD_NATS_CA_PATH = "/etc/jobq/nats-ca/ca.crt"
"""Where a Kubernetes task pod finds key ``ca.crt`` of JOBQ_POD_NATS_CA_SECRET (its JOBQ_NATS_CA)."""


class NatsTlsError(ValueError):
    """A TLS file named in the environment cannot be used; the message names the variable."""


def nats_tls_options(environ: Mapping[str, str]) -> dict[str, Any]:
    """``{"tls": SSLContext}`` for nats.connect from JOBQ_NATS_CA / JOBQ_NATS_CERT / JOBQ_NATS_KEY,
    or ``{}`` when none is set. NatsTlsError if a file is missing or not what it should be."""
    ca = environ.get(names.ENV_NATS_CA, "").strip()
    cert = environ.get(names.ENV_NATS_CERT, "").strip()
    key = environ.get(names.ENV_NATS_KEY, "").strip()
    if not (ca or cert or key):
        return {}
    return {"tls": client_tls_context(ca_file=ca, cert_file=cert, key_file=key)}


def client_tls_context(*, ca_file: str = "", cert_file: str = "", key_file: str = "") -> ssl.SSLContext:
    """An SSL context that verifies the server (hostname included) against ``ca_file`` (the
    system's CAs when empty) and presents ``cert_file``/``key_file`` when given."""
    if key_file and not cert_file:
        raise NatsTlsError(f"{names.ENV_NATS_KEY} is set without {names.ENV_NATS_CERT}")
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file or None)
    except ssl.SSLError:  # an OSError too: first
        raise NatsTlsError(f"{names.ENV_NATS_CA}={ca_file!r} holds no PEM CA certificate") from None
    except OSError as exc:
        raise NatsTlsError(
            f"{names.ENV_NATS_CA}={ca_file!r}: cannot read the CA file: {exc.strerror or exc}"
        ) from None
    if cert_file:
        try:
            context.load_cert_chain(cert_file, key_file or None)
        except OSError as exc:  # ssl.SSLError included: not a PEM certificate and matching key
            where = f"{names.ENV_NATS_CERT}={cert_file!r} / {names.ENV_NATS_KEY}={key_file!r}"
            problem = exc.strerror or "not a PEM certificate and its key"
            raise NatsTlsError(f"{where}: cannot load the client certificate: {problem}") from None
    return context


def describe_tls_failure(error: BaseException | None, url: str) -> str | None:
    """A one-line explanation when ``error`` (the last connect error) is a TLS failure, else None."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return (
            f"NATS at {url}: the server's TLS certificate does not verify "
            f"({error.verify_message or error.reason}): set {names.ENV_NATS_CA} to the CA that "
            "signed it (jobq up keeps its CA in <data dir>/tls/ca.crt)"
        )
    if isinstance(error, ssl.SSLError):
        return f"NATS at {url}: TLS handshake failed ({error.reason or error})"
    return None
