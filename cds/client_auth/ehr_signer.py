"""Sign CDS client JWTs the way an EHR does: for simulated EHRs in tests, the benchmark and the demo.

Production EHRs sign their own tokens; this is the counterpart of ``verify.py`` used wherever Veritrace
plays the EHR side, so every caller signs exactly as the spec describes (header alg/kid/typ[/jku];
claims iss/aud/exp/iat/jti).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
CURVE_FOR = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1}


class EhrTokenSigner:
    def __init__(self, iss: str, key: PrivateKey, *, kid: str, alg: str, jku: str | None = None) -> None:
        if alg.startswith("ES") != isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"algorithm {alg} does not fit a {type(key).__name__}")
        self.iss, self.key, self.kid, self.alg, self.jku = iss, key, kid, alg, jku

    @classmethod
    def generate(
        cls, iss: str, *, alg: str = "ES384", kid: str | None = None, jku: str | None = None
    ) -> EhrTokenSigner:
        """A fresh key pair: EC on the algorithm's curve, or RSA-2048."""
        key: PrivateKey
        if alg in CURVE_FOR:
            key = ec.generate_private_key(CURVE_FOR[alg]())
        elif alg in ("RS256", "RS384"):
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            raise ValueError(f"unsupported algorithm {alg!r}")
        return cls(iss, key, kid=kid or uuid.uuid4().hex[:12], alg=alg, jku=jku)

    def public_jwk(self) -> dict[str, Any]:
        public = self.key.public_key()
        if isinstance(public, ec.EllipticCurvePublicKey):
            jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.public_jwk()]}

    def token(
        self,
        audience: str,
        *,
        lifetime_s: int = 300,
        issued_at: float | None = None,
        jti: str | None = None,
        header: dict[str, Any] | None = None,
        claims: dict[str, Any] | None = None,
    ) -> str:
        """A signed token for a call to ``audience`` (the full service URL).

        ``header`` / ``claims`` override the defaults; a None value removes that member (for tests of
        malformed tokens).
        """
        iat = int(time.time() if issued_at is None else issued_at)
        payload = {
            "iss": self.iss,
            "aud": audience,
            "iat": iat,
            "exp": iat + lifetime_s,
            "jti": jti or str(uuid.uuid4()),
        }
        headers: dict[str, Any] = {"typ": "JWT", "kid": self.kid}
        if self.jku:
            headers["jku"] = self.jku
        merged_claims = {k: v for k, v in {**payload, **(claims or {})}.items() if v is not None}
        merged_header = {k: v for k, v in {**headers, **(header or {})}.items() if v is not None}
        return jwt.encode(merged_claims, self.key, algorithm=self.alg, headers=merged_header)
