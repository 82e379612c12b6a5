"""A throw-away PKI for TLS tests, made with the `cryptography` package.

`make_pki(directory)` writes PEM files and returns their paths:

* ``ca``: the CA every good certificate chains to;
* ``server``: a shard's certificate for 127.0.0.1 and localhost (SAN IP and DNS);
* ``proxy``: a proxy's certificate (CN ``proxy``), usable as a client (to the
  shards) and as a server (its Control API on 127.0.0.1);
* ``client``: an operator's client certificate (CN ``operator``);
* ``admin``: another client certificate (CN ``restore-admin``);
* ``expired``: a client certificate from the good CA whose validity ended yesterday;
* ``rogue``: a client certificate (CN ``operator``) signed by another CA (``other_ca``).

Each certificate ``name`` has ``name.pem`` and ``name.key``. EC P-256 keys: fast.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Pki", "Pair", "make_pki"]


@dataclasses.dataclass(frozen=True)
class Pair:
    cert: str
    key: str


@dataclasses.dataclass(frozen=True)
class Pki:
    directory: Path
    ca: str
    other_ca: str
    server: Pair
    proxy: Pair
    client: Pair
    admin: Pair
    expired: Pair
    rogue: Pair


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nfs-journal tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _ca(directory: Path, name: str, cn: str, now: datetime.datetime):
    key = _key()
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _leaf(directory: Path, name: str, cn: str, issuer, *, server: bool, client: bool,
          not_before: datetime.datetime, not_after: datetime.datetime) -> Pair:
    ca_cert, ca_key = issuer
    key = _key()
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + \
             ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    pair = Pair(str(directory / f"{name}.pem"), str(directory / f"{name}.key"))
    Path(pair.cert).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(Path(pair.key), key)
    return pair


def make_pki(directory: Path) -> Pki:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    valid = dict(not_before=now - datetime.timedelta(hours=1), not_after=now + datetime.timedelta(days=7))
    ca = _ca(directory, "ca", "nfs-journal test CA", now)
    other = _ca(directory, "other-ca", "someone else's CA", now)
    return Pki(
        directory=directory,
        ca=str(directory / "ca.pem"),
        other_ca=str(directory / "other-ca.pem"),
        server=_leaf(directory, "server", "shard", ca, server=True, client=False, **valid),
        proxy=_leaf(directory, "proxy", "proxy", ca, server=True, client=True, **valid),
        client=_leaf(directory, "client", "operator", ca, server=False, client=True, **valid),
        admin=_leaf(directory, "admin", "restore-admin", ca, server=False, client=True, **valid),
        expired=_leaf(directory, "expired", "operator", ca, server=False, client=True,
                      not_before=now - datetime.timedelta(days=10),
                      not_after=now - datetime.timedelta(days=1)),
        rogue=_leaf(directory, "rogue", "operator", other, server=False, client=True, **valid),
    )
