"""Certificates and keys for the local control plane (uses the ``cryptography`` package).

Layout under the PKI directory:
``ca.crt/key`` (cluster CA, also signs client certs), ``apiserver.crt/key`` (serving),
``admin.crt/key`` (O=system:masters), ``kube-controller-manager.crt/key``,
``kube-scheduler.crt/key``, ``sa.key/pub`` (service-account token signing),
``front-proxy-ca.crt/key`` and ``front-proxy-client.crt/key`` (the apiserver's request-header
authentication for aggregated APIs; without it the controllers log errors about a missing
requestheader CA bundle every few seconds), ``apiserver-kubelet-client.crt/key`` (the apiserver's
identity towards kubelets, for ``pods/log``: CN kube-apiserver-kubelet-client, O system:masters).
Kubelet serving certificates are issued per node (``issue_serving_cert``).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=3650)
APISERVER_DNS = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
APISERVER_IPS = ("127.0.0.1", "10.0.0.1")
"""Loopback plus the first address of the service CIDR (the ``kubernetes`` Service)."""
FRONT_PROXY_CLIENT_CN = "front-proxy-client"
KUBELET_CLIENT_CN = "kube-apiserver-kubelet-client"
"""The apiserver's client identity when it calls a kubelet (logs); kubelets accept it."""


@dataclass(frozen=True)
class CertPair:
    """A PEM certificate and its PEM private key on disk."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """All the files the control plane components are started with."""

    directory: Path
    ca: CertPair
    apiserver: CertPair
    admin: CertPair
    controller_manager: CertPair
    scheduler: CertPair
    sa_private_key: Path
    sa_public_key: Path
    front_proxy_ca: CertPair
    front_proxy_client: CertPair
    apiserver_kubelet_client: CertPair

    @classmethod
    def at(cls, directory: Path) -> Pki:
        """The paths used under ``directory`` (whether or not they exist yet)."""

        def pair(name: str) -> CertPair:
            return CertPair(directory / f"{name}.crt", directory / f"{name}.key")

        return cls(
            directory=directory,
            ca=pair("ca"),
            apiserver=pair("apiserver"),
            admin=pair("admin"),
            controller_manager=pair("kube-controller-manager"),
            scheduler=pair("kube-scheduler"),
            sa_private_key=directory / "sa.key",
            sa_public_key=directory / "sa.pub",
            front_proxy_ca=pair("front-proxy-ca"),
            front_proxy_client=pair("front-proxy-client"),
            apiserver_kubelet_client=pair("apiserver-kubelet-client"),
        )


def generate_pki(directory: Path) -> Pki:
    """Create a fresh CA and every certificate and key the control plane needs."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    pki = Pki.at(directory)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _ca_certificate(ca_key, "jobq-dev-cluster-ca")
    _write(pki.ca, ca_cert, ca_key)
    proxy_ca_key = ec.generate_private_key(ec.SECP256R1())
    proxy_ca_cert = _ca_certificate(proxy_ca_key, "jobq-dev-cluster-front-proxy-ca")
    _write(pki.front_proxy_ca, proxy_ca_cert, proxy_ca_key)
    proxy_key = ec.generate_private_key(ec.SECP256R1())
    proxy_cert = _leaf(
        proxy_ca_cert,
        proxy_ca_key,
        proxy_key,
        FRONT_PROXY_CLIENT_CN,
        (),
        ExtendedKeyUsageOID.CLIENT_AUTH,
        [],
    )
    _write(pki.front_proxy_client, proxy_cert, proxy_key)

    serving_key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in APISERVER_DNS]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in APISERVER_IPS]
    serving = _leaf(ca_cert, ca_key, serving_key, "kube-apiserver", (), ExtendedKeyUsageOID.SERVER_AUTH, sans)
    _write(pki.apiserver, serving, serving_key)

    clients = (
        (pki.admin, "kubernetes-admin", ("system:masters",)),
        (pki.controller_manager, "system:kube-controller-manager", ()),
        (pki.scheduler, "system:kube-scheduler", ()),
        (pki.apiserver_kubelet_client, KUBELET_CLIENT_CN, ("system:masters",)),
    )
    for pair, cn, orgs in clients:
        issue_client_cert(pki, pair, common_name=cn, organizations=orgs)

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pki.sa_private_key.write_bytes(_key_pem(sa_key))
    pki.sa_private_key.chmod(0o600)
    pki.sa_public_key.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return pki


def issue_client_cert(
    pki: Pki, pair: CertPair, *, common_name: str, organizations: tuple[str, ...] = ()
) -> CertPair:
    """Sign a client certificate with the cluster CA: CN is the user name, each O a group.

    For a node agent use ``common_name="system:node:<node>", organizations=("system:nodes",)``
    so that the Node authorizer applies.
    """
    ca_cert, ca_key = _load_ca(pki)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _leaf(ca_cert, ca_key, key, common_name, organizations, ExtendedKeyUsageOID.CLIENT_AUTH, [])
    _write(pair, cert, key)
    return pair


def issue_serving_cert(
    pki: Pki,
    pair: CertPair,
    *,
    common_name: str,
    dns_names: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
    organizations: tuple[str, ...] = (),
) -> CertPair:
    """Sign a TLS serving certificate with the cluster CA for ``dns_names`` and ``ips``.

    For a kubelet: ``common_name="system:node:<node>", organizations=("system:nodes",)``, SANs the
    node name and 127.0.0.1 (the apiserver dials the node's InternalIP and verifies it).
    """
    ca_cert, ca_key = _load_ca(pki)
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    cert = _leaf(ca_cert, ca_key, key, common_name, organizations, ExtendedKeyUsageOID.SERVER_AUTH, sans)
    _write(pair, cert, key)
    return pair


def _load_ca(pki: Pki) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert = x509.load_pem_x509_certificate(pki.ca.cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca.key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"unexpected CA key type in {pki.ca.key}")
    return ca_cert, ca_key


def _ca_certificate(key: ec.EllipticCurvePrivateKey, common_name: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            _key_usage(ca=True),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """Digital signature for every certificate; certificate and CRL signing for the CA only."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    key: ec.EllipticCurvePrivateKey,
    common_name: str,
    organizations: tuple[str, ...],
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName],
) -> x509.Certificate:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(ca=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(pair: CertPair, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    pair.key.write_bytes(_key_pem(key))
    pair.key.chmod(0o600)
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
