"""Settings: embedded defaults under VERITRACE_HOME, and the names operators rely on."""

from __future__ import annotations

from pathlib import Path

import pytest

from cds.settings import Settings


def test_embedded_defaults_live_under_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VERITRACE_HOME", str(tmp_path / "home"))
    settings = Settings()
    home = (tmp_path / "home").resolve()
    assert settings.resolved_database_url == f"sqlite:///{home / 'veritrace.db'}"
    assert settings.resolved_broker_url == f"sqla+sqlite:///{home / 'broker.db'}"
    assert settings.dicom_config().spool_dir == home / "spool"
    assert settings.resolved_model_path == home / "models" / "tiny-qwen2_5_vl"
    assert (settings.api_host, settings.api_port) == ("127.0.0.1", 8080)
    assert (settings.dicom_port, settings.dicom_ae_title, settings.stable_age) == (11112, "VERITRACE", 5.0)
    ledger = settings.ledger_config()
    assert ledger.key_dir == home / "keys"
    dicom = settings.dicom_config()
    assert (dicom.fsync, dicom.network_timeout_s) == (True, 60.0)  # durable unless an operator opts out
    assert (dicom.intake_queue_capacity, dicom.intake_batch_max) == (1000, 200)


def test_environment_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "VERITRACE_DATABASE_URL": "postgresql+psycopg://db/vt",
        "VERITRACE_BROKER_URL": "amqp://guest:guest@mq:5672//",
        "VERITRACE_FHIR_BASE_URL": "http://fhir.example/r4",
        "VERITRACE_MODEL_PATH": str(tmp_path / "lingshu"),
        "VERITRACE_API_PORT": "9090",
        "VERITRACE_DICOM_PORT": "11113",
        "VERITRACE_DICOM_AE_TITLE": "VT_CT",
        "VERITRACE_STABLE_AGE": "2.5",
        "VERITRACE_DICOM_FSYNC": "false",
        "VERITRACE_DICOM_NETWORK_TIMEOUT_S": "15",
        "VERITRACE_DICOM_INTAKE_QUEUE_CAPACITY": "50",
        "VERITRACE_DICOM_INTAKE_BATCH_MAX": "10",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.resolved_database_url == "postgresql+psycopg://db/vt"
    assert settings.resolved_broker_url == "amqp://guest:guest@mq:5672//"
    assert settings.fhir_config().base_url == "http://fhir.example/r4"
    assert settings.model_settings().path == tmp_path / "lingshu"
    dicom = settings.dicom_config()
    assert (dicom.port, dicom.ae_title, dicom.stable_age_s) == (11113, "VT_CT", 2.5)
    assert (dicom.fsync, dicom.network_timeout_s) == (False, 15.0)
    assert (dicom.intake_queue_capacity, dicom.intake_batch_max) == (50, 10)
    assert settings.api_port == 9090


def test_bad_value_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VERITRACE_API_PORT", "not-a-port")
    with pytest.raises(ValueError, match="api_port"):
        Settings()


@pytest.mark.parametrize(
    ("name", "value"),
    [("VERITRACE_DICOM_NETWORK_TIMEOUT_S", "0"), ("VERITRACE_DICOM_INTAKE_QUEUE_CAPACITY", "0")],
)
def test_dicom_limits_must_be_positive(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name.removeprefix("VERITRACE_").lower()):
        Settings()
