"""The demo's EHR: a CDS client with its own ES384 key, trusted through an issuers file, that fires hooks.

It does what an EHR does: reads our discovery document, fills each prefetch template from its FHIR server,
signs a fresh JWT per call (aud = the service URL, unique jti) and POSTs the hook.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cds.settings import Settings

DEMO_ISSUER = "https://demo-ehr.veritrace.local"
DEMO_KID = "demo-ehr-es384"
DEMO_USER = "Practitioner/vt-demo-radiologist"
PATIENT_VIEW_SERVICE = "veritrace-patient-view"


def _public_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": DEMO_KID, "alg": "ES384", "use": "sig"})
    return dict(jwk)


@dataclass
class DemoEhr:
    key: ec.EllipticCurvePrivateKey
    issuers_file: Path

    @classmethod
    def create(cls, settings: Settings) -> DemoEhr:
        """Make (or reuse) the demo EHR's key and an issuers file that trusts exactly it."""
        folder = settings.resolved_home / "demo-ehr"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        key_path = folder / "key.pem"
        if key_path.exists():
            return cls.load(settings)
        key = ec.generate_private_key(ec.SECP384R1())
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)
        issuers_file = folder / "issuers.json"
        issuers_file.write_text(json.dumps({DEMO_ISSUER: {"jwks": {"keys": [_public_jwk(key)]}}}, indent=2))
        return cls(key=key, issuers_file=issuers_file)

    @classmethod
    def load(cls, settings: Settings) -> DemoEhr:
        folder = settings.resolved_home / "demo-ehr"
        key = serialization.load_pem_private_key((folder / "key.pem").read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cls(key=key, issuers_file=folder / "issuers.json")

    def sign(self, audience: str) -> str:
        now = int(time.time())
        claims = {
            "iss": DEMO_ISSUER,
            "sub": "demo-ehr-client",
            "aud": audience,
            "iat": now,
            "exp": now + 300,
            "jti": str(uuid.uuid4()),
        }
        return jwt.encode(claims, self.key, algorithm="ES384", headers={"kid": DEMO_KID, "typ": "JWT"})

    def call_patient_view(self, settings: Settings, patient_id: str, fhir_base_url: str) -> dict[str, Any]:
        base = settings.resolved_public_base_url
        with httpx.Client(timeout=30) as client:
            discovery = client.get(f"{base}/cds-services").raise_for_status().json()
            service = next(s for s in discovery["services"] if s["id"] == PATIENT_VIEW_SERVICE)
            context = {"userId": DEMO_USER, "patientId": patient_id}
            prefetch = {
                key: _fetch_prefetch(client, fhir_base_url, template, context)
                for key, template in service.get("prefetch", {}).items()
            }
            url = f"{base}/cds-services/{PATIENT_VIEW_SERVICE}"
            body = {
                "hook": "patient-view",
                "hookInstance": str(uuid.uuid4()),
                "fhirServer": fhir_base_url,
                "context": context,
                "prefetch": prefetch,
            }
            response = client.post(url, json=body, headers={"Authorization": f"Bearer {self.sign(url)}"})
            response.raise_for_status()
            return dict(response.json())


def _fetch_prefetch(
    client: httpx.Client, fhir_base_url: str, template: str, context: dict[str, str]
) -> dict[str, Any] | None:
    """Fill `{{context.x}}` / `{{userPractitionerId}}` tokens; read the query from the EHR FHIR server."""
    values = {f"context.{k}": v for k, v in context.items()}
    values["userPractitionerId"] = context["userId"].split("/")[-1]
    query = re.sub(r"\{\{\s*([\w.]+)\s*\}\}", lambda m: values.get(m.group(1), ""), template)
    response = client.get(f"{fhir_base_url.rstrip('/')}/{query}")
    return dict(response.json()) if response.status_code == 200 else None
