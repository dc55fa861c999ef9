"""Stand-in for a Kubernetes service-account issuer (the API server's token signer).

Mints projected service-account tokens with the claims the API server puts in them: iss,
sub=system:serviceaccount:NS:NAME, aud[], exp, iat, nbf, jti and the `kubernetes.io` pod
binding, RS256 with a `kid`. tests/e2e/test_parity.py runs the same cases on real tokens.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from joserfc import jwk, jwt


@dataclass
class StubIssuer:
    issuer: str = "https://kubernetes.default.svc.cluster.local"
    kid: str = "sa-key-1"
    key: jwk.RSAKey = field(init=False)

    def __post_init__(self) -> None:
        self.key = jwk.RSAKey.generate_key(2048, parameters={"kid": self.kid})

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.key.as_dict(private=False) | {"use": "sig", "alg": "RS256"}]}

    def mint(
        self,
        *,
        audience: str = "flyte-auth",
        namespace: str = "flytesnacks-development",
        service_account: str = "default",
        pod: str = "f3a1b2c4d5e6-n0-0",
        pod_uid: str = "0b6a4f0e-1111-4a3c-9d7e-2a1e3c4b5d6f",
        lifetime: int = 3600,
        now: float | None = None,
    ) -> str:
        iat = int(time.time() if now is None else now)
        claims = {
            "iss": self.issuer,
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
            "aud": [audience],
            "iat": iat,
            "nbf": iat,
            "exp": iat + lifetime,
            "jti": str(uuid.uuid4()),
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": service_account, "uid": str(uuid.uuid4())},
                "pod": {"name": pod, "uid": pod_uid},
                "node": {"name": "node-1", "uid": str(uuid.uuid4())},
            },
        }
        return jwt.encode({"alg": "RS256", "kid": self.kid}, claims, self.key)

    def write(self, path: Path, **kwargs: Any) -> str:
        """Write a fresh token the way the kubelet does; return it."""
        return write_token_file(path, self.mint(**kwargs))


def write_token_file(path: Path, token: str) -> str:
    """Replace the projected token file atomically, as the kubelet does."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(token)
    tmp.replace(path)
    return token
