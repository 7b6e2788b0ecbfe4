"""deploy/generate_secrets.py: every secret a deployment needs, consistent with each other and loadable."""

from __future__ import annotations

import importlib.util
import stat
import sys
from pathlib import Path
from types import ModuleType

import pytest
from cryptography import x509
from kombu.utils.url import url_to_parts
from sqlalchemy.engine import make_url

from audit.review.login_sealing import decode_login_key
from audit.signing import NoteVerifier, load_signer
from cds.viewer.sealed_secrets import decode_key
from integrations.dicom.spool_key import load_spool_key

REPO = Path(__file__).resolve().parents[2]
ORIGIN = "veritrace.example-hospital.invalid/ledger"


def load_deploy_module(relative: str) -> ModuleType:
    """deploy/ is not an installed package (it never ships in the image); load its scripts by path."""
    path = REPO / relative
    name = f"veritrace_deploy_{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is being built
    spec.loader.exec_module(module)
    return module


generator = load_deploy_module("deploy/generate_secrets.py")


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    out = tmp_path / "secrets"
    generator.generate_secrets(out, origin=ORIGIN, postgres_host="db.internal", rabbitmq_host="mq.internal")
    return out


def test_writes_every_file_into_an_owner_only_directory(secrets_dir: Path) -> None:
    assert sorted(p.name for p in secrets_dir.iterdir()) == sorted(generator.SECRET_FILES)
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
    for path in secrets_dir.iterdir():
        assert path.stat().st_size > 0, path.name


def test_database_url_embeds_the_postgres_password_and_parses(secrets_dir: Path) -> None:
    url = make_url((secrets_dir / "database_url").read_text())
    assert url.drivername == "postgresql+psycopg"
    assert (url.host, url.port, url.username, url.database) == ("db.internal", 5432, "veritrace", "veritrace")
    assert url.password == (secrets_dir / "postgres_password").read_text()


def test_broker_url_matches_the_rabbitmq_credentials(secrets_dir: Path) -> None:
    parts = url_to_parts((secrets_dir / "broker_url").read_text())
    conf = dict(
        line.split(" = ", 1) for line in (secrets_dir / "rabbitmq.conf").read_text().splitlines() if line
    )
    assert parts.scheme == "amqp" and parts.hostname == "mq.internal"
    assert (parts.username, parts.password, parts.path) == (
        conf["default_user"],
        conf["default_pass"],
        conf["default_vhost"],
    )


def test_env_file_carries_the_same_urls(secrets_dir: Path) -> None:
    env = dict(line.split("=", 1) for line in (secrets_dir / "veritrace.env").read_text().splitlines())
    assert env == {
        "VERITRACE_DATABASE_URL": (secrets_dir / "database_url").read_text(),
        "VERITRACE_BROKER_URL": (secrets_dir / "broker_url").read_text(),
    }


def test_passwords_differ_between_services_and_runs(tmp_path: Path, secrets_dir: Path) -> None:
    other = tmp_path / "other"
    generator.generate_secrets(other, origin=ORIGIN)
    first = make_url((secrets_dir / "database_url").read_text()).password
    second = make_url((other / "database_url").read_text()).password
    broker = url_to_parts((secrets_dir / "broker_url").read_text()).password
    assert len({first, second, broker}) == 3


def test_ledger_key_is_loadable_by_the_ledger_and_matches_its_verifier(
    tmp_path: Path, secrets_dir: Path
) -> None:
    key_dir = tmp_path / "keys"
    key_dir.mkdir()
    (key_dir / "ledger.key").write_bytes((secrets_dir / "ledger.key").read_bytes())
    signer = load_signer(key_dir, ORIGIN)
    verifier = NoteVerifier.from_vkey((secrets_dir / "ledger.vkey").read_text().strip())
    assert verifier.vkey.startswith(ORIGIN + "+")
    message = b"veritrace.example-hospital.invalid/ledger\n7\nroot\n"
    assert verifier.verify(message, signer.sign(message))
    assert not verifier.verify(message + b"x", signer.sign(message))


def test_tls_certificate_names_the_requested_hosts(tmp_path: Path) -> None:
    out = tmp_path / "tls"
    generator.generate_secrets(out, origin=ORIGIN, tls_hostnames=["cds.hospital.invalid"])
    cert = x509.load_pem_x509_certificate((out / "tls.crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["cds.hospital.invalid"]


def test_refuses_to_overwrite_existing_secrets(secrets_dir: Path) -> None:
    before = {p.name: p.read_bytes() for p in secrets_dir.iterdir()}
    with pytest.raises(generator.SecretsExist, match="rotate"):
        generator.generate_secrets(secrets_dir, origin=ORIGIN)
    assert {p.name: p.read_bytes() for p in secrets_dir.iterdir()} == before


def test_partial_leftovers_are_refused_too(tmp_path: Path) -> None:
    out = tmp_path / "partial"
    out.mkdir()
    (out / "ledger.key").write_text("old key")
    with pytest.raises(generator.SecretsExist, match=r"ledger\.key"):
        generator.generate_secrets(out, origin=ORIGIN)
    assert [p.name for p in out.iterdir()] == ["ledger.key"]


def test_bad_origin_is_rejected_before_anything_is_written(tmp_path: Path) -> None:
    out = tmp_path / "bad"
    with pytest.raises(ValueError, match="origin"):
        generator.generate_secrets(out, origin="has space/ledger")
    assert not any(out.iterdir())


def test_cli_reports_without_printing_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert generator.main([str(out), "--origin", ORIGIN]) == 0
    printed = capsys.readouterr().out
    assert "values not shown" in printed
    assert (out / "postgres_password").read_text() not in printed
    assert generator.main([str(out), "--origin", ORIGIN]) == 2


def test_shared_session_keys_decode_where_they_are_used_and_reach_the_api_env_file(
    tmp_path: Path, secrets_dir: Path
) -> None:
    viewer = (secrets_dir / "viewer_session_key").read_text()
    review = (secrets_dir / "review_login_key").read_text()
    assert len(decode_key(viewer)) == 32 and len(decode_login_key(review)) == 32
    assert viewer != review
    env = dict(line.split("=", 1) for line in (secrets_dir / "api.env").read_text().splitlines())
    assert env == {"VERITRACE_VIEWER_SESSION_KEY": viewer, "VERITRACE_REVIEW_LOGIN_KEY": review}
    other = tmp_path / "other"
    generator.generate_secrets(other, origin=ORIGIN)
    assert (other / "viewer_session_key").read_text() != viewer
    assert (other / "review_login_key").read_text() != review


def test_spool_key_is_owner_read_only_and_loads_as_the_spool_loads_it(
    tmp_path: Path, secrets_dir: Path
) -> None:
    path = secrets_dir / "spool.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o400
    key = load_spool_key(path)
    other = tmp_path / "other"
    generator.generate_secrets(other, origin=ORIGIN)
    assert load_spool_key(other / "spool.key").key_id != key.key_id
