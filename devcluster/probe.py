"""Small blocking HTTP(S) probes used to wait for components to become healthy."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass

from devcluster.pki import CertPair


@dataclass(frozen=True)
class ProbeResult:
    """The outcome of one GET: ``status`` 0 means no HTTP answer at all."""

    status: int
    body: str

    @property
    def ok(self) -> bool:
        """True for a 2xx answer."""
        return 200 <= self.status < 300


def client_context(ca_cert: str | None, client: CertPair | None) -> ssl.SSLContext:
    """A TLS context trusting ``ca_cert`` (or nothing, if None) and presenting ``client``."""
    if ca_cert is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cafile=ca_cert)
    if client is not None:
        ctx.load_cert_chain(str(client.cert), str(client.key))
    return ctx


def get(url: str, *, context: ssl.SSLContext | None = None, timeout: float = 2.0) -> ProbeResult:
    """GET ``url``; never raises for network or HTTP errors."""
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
            return ProbeResult(resp.status, resp.read(4096).decode(errors="replace"))
    except urllib.error.HTTPError as exc:
        return ProbeResult(exc.code, exc.read(4096).decode(errors="replace"))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return ProbeResult(0, str(exc))
