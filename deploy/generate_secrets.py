"""Generate every secret a Veritrace deployment needs, once, into one directory outside version control.

Why a generator: the compose file and the Helm chart reference secrets by file name and never hold a
value. The database password, the broker password and the URLs that embed them have to agree, and the
ledger's signing key has to be named after ``VERITRACE_LEDGER_ORIGIN`` (the C2SP signed-note key name);
writing them by hand is how deployments end up with ``changeme`` in production.

Usage (from the repository root, with the project's virtualenv)::

    python deploy/generate_secrets.py deploy/secrets --origin veritrace.example-hospital.org/ledger

For a cluster, pass the hosts of the managed PostgreSQL and RabbitMQ (``--postgres-host``,
``--rabbitmq-host``); the compose defaults are the service names ``postgres`` and ``rabbitmq``.

Files (the directory is created mode 0700; the files are 0644 because containers running as other
uids must read their bind-mounted copies, and the directory already keeps other host users out; the one
exception is ``spool.key``):

``postgres_password``   the database role's password (PostgreSQL image: ``POSTGRES_PASSWORD_FILE``)
``rabbitmq.conf``       RabbitMQ's default user and password (mounted into ``/etc/rabbitmq/conf.d``)
``database_url``        ``VERITRACE_DATABASE_URL``, for a Kubernetes Secret
``broker_url``          ``VERITRACE_BROKER_URL``, for a Kubernetes Secret
``veritrace.env``       both URLs as an env file, for compose and systemd
``orthanc.env``         the sample PACS's web user (``ORTHANC__REGISTERED_USERS``)
``ledger.key``          the Ed25519 checkpoint signing key (PKCS#8 PEM)
``ledger.vkey``         its public verifier key (signed-note format), to publish to auditors
``tls.crt``/``tls.key`` a self-signed certificate for the proxy; replace with one the hospital's CA issued
``viewer_session_key``  ``VERITRACE_VIEWER_SESSION_KEY`` (base64url AES-256), for a Kubernetes Secret
``review_login_key``    ``VERITRACE_REVIEW_LOGIN_KEY`` (base64url AES-256), for a Kubernetes Secret
``api.env``             both keys as an env file, for the compose ``api`` service only
``spool.key``           the spool's at-rest encryption key (``veritrace spool create-key``'s format),
                        mode 0400: the spool refuses a key file group or others may read. For compose,
                        ``chown`` it to the image's uid (10001) so the bind-mounted copy is readable

Every API replica must hold the same two session keys, and every api, dicom and worker process the same
spool key: a replica with its own key cannot open what another sealed (a viewer session, a pending
review sign-in, a spooled study). That is why they are made here, once, and not on first start.

An existing directory that already holds any of these files is refused: regenerating the signing key
or the database password of a running deployment is a rotation, and deserves its own procedure.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import secrets
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from audit.config import LedgerConfig
from audit.review.login_sealing import new_login_key
from audit.signing import PRIVATE_KEY_FILE, VERIFIER_DIR, generate_key
from integrations.dicom.spool_key import create_spool_key

SECRET_FILES = (
    "postgres_password",
    "rabbitmq.conf",
    "database_url",
    "broker_url",
    "veritrace.env",
    "orthanc.env",
    "ledger.key",
    "ledger.vkey",
    "tls.crt",
    "tls.key",
    "viewer_session_key",
    "review_login_key",
    "api.env",
    "spool.key",
)
SPOOL_KEY_MODE = 0o400
DB_USER = "veritrace"
DB_NAME = "veritrace"
BROKER_USER = "veritrace"
BROKER_VHOST = "veritrace"
TLS_DAYS = 365


class SecretsExist(RuntimeError):
    """The output directory already holds generated secrets; rotating them is a separate procedure."""


def _password() -> str:
    # URL-safe alphabet: the password is embedded verbatim in the database and broker URLs.
    return secrets.token_urlsafe(32)


def _write(directory: Path, name: str, content: str | bytes) -> None:
    data = content.encode() if isinstance(content, str) else content
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _ledger_key_pair(origin: str) -> tuple[bytes, str]:
    """Make the key with the ledger's own keygen, so the format is exactly what the ledger loads."""
    LedgerConfig(origin=origin, key_dir=Path("."), anchor_dir=None)  # validates the origin
    with tempfile.TemporaryDirectory() as scratch:
        key_dir = Path(scratch)
        verifier = generate_key(key_dir, origin)
        private_pem = (key_dir / PRIVATE_KEY_FILE).read_bytes()
        (vkey_file,) = (key_dir / VERIFIER_DIR).glob("*.vkey")
        if vkey_file.read_text().strip() != verifier.vkey:
            raise RuntimeError("keygen wrote a verifier key that does not match the key it returned")
        return private_pem, verifier.vkey + "\n"


def _self_signed_tls(hostnames: Sequence[str]) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = [x509.DNSName(host) for host in hostnames]
    alt_names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=TLS_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def generate_secrets(
    directory: Path,
    *,
    origin: str,
    postgres_host: str = "postgres",
    rabbitmq_host: str = "rabbitmq",
    tls_hostnames: Sequence[str] = ("veritrace.local", "localhost"),
) -> list[Path]:
    """Write every file of ``SECRET_FILES`` into ``directory``; returns their paths.

    Raises SecretsExist when any of them is already there (nothing is written then).
    """
    if not tls_hostnames:
        raise ValueError("tls_hostnames must name at least one host")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    directory.chmod(0o700)
    present = [name for name in SECRET_FILES if (directory / name).exists()]
    if present:
        raise SecretsExist(f"{directory} already holds {', '.join(present)}; rotate them deliberately")
    db_password, broker_password, orthanc_password = _password(), _password(), _password()
    database_url = f"postgresql+psycopg://{DB_USER}:{db_password}@{postgres_host}:5432/{DB_NAME}"
    broker_url = f"amqp://{BROKER_USER}:{broker_password}@{rabbitmq_host}:5672/{BROKER_VHOST}"
    ledger_pem, ledger_vkey = _ledger_key_pair(origin)
    # Both are base64url of 32 random bytes, the form the viewer and the review app decode.
    viewer_session_key, review_login_key = new_login_key(), new_login_key()
    tls_cert, tls_key = _self_signed_tls(tls_hostnames)
    contents: dict[str, str | bytes] = {
        "postgres_password": db_password,
        "rabbitmq.conf": (
            f"default_user = {BROKER_USER}\ndefault_pass = {broker_password}\n"
            f"default_vhost = {BROKER_VHOST}\n"
        ),
        "database_url": database_url,
        "broker_url": broker_url,
        "veritrace.env": f"VERITRACE_DATABASE_URL={database_url}\nVERITRACE_BROKER_URL={broker_url}\n",
        "orthanc.env": "ORTHANC__REGISTERED_USERS=" + json.dumps({"veritrace": orthanc_password}) + "\n",
        "ledger.key": ledger_pem,
        "ledger.vkey": ledger_vkey,
        "tls.crt": tls_cert,
        "tls.key": tls_key,
        "viewer_session_key": viewer_session_key,
        "review_login_key": review_login_key,
        "api.env": (
            f"VERITRACE_VIEWER_SESSION_KEY={viewer_session_key}\n"
            f"VERITRACE_REVIEW_LOGIN_KEY={review_login_key}\n"
        ),
    }
    for name in SECRET_FILES:
        if name in contents:
            _write(directory, name, contents[name])
    spool_key = directory / "spool.key"
    create_spool_key(spool_key)  # the same writer as `veritrace spool create-key`
    spool_key.chmod(SPOOL_KEY_MODE)
    return [directory / name for name in SECRET_FILES]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the secrets of a Veritrace deployment.")
    parser.add_argument("directory", type=Path, help="where to write them (e.g. deploy/secrets)")
    parser.add_argument("--origin", required=True, help="VERITRACE_LEDGER_ORIGIN, the signing key's name")
    parser.add_argument("--postgres-host", default="postgres")
    parser.add_argument("--rabbitmq-host", default="rabbitmq")
    parser.add_argument(
        "--tls-hostname", action="append", dest="tls_hostnames", help="proxy certificate name (repeat)"
    )
    args = parser.parse_args(argv)
    try:
        written = generate_secrets(
            args.directory,
            origin=args.origin,
            postgres_host=args.postgres_host,
            rabbitmq_host=args.rabbitmq_host,
            tls_hostnames=args.tls_hostnames or ("veritrace.local", "localhost"),
        )
    except (SecretsExist, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} files to {args.directory} (values not shown)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
