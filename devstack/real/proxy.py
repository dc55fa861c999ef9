"""oauth2-proxy (built from the Go module proxy by devstack.real.peers) as Flyte 2's auth
proxy: bearer tokens only, an OIDC provider for its required login configuration, and extra
JWT issuers it trusts."""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

from devstack.real import peers
from devstack.real.cluster import free_port
from devstack.real.process import stop, until_ok


@contextlib.asynccontextmanager
async def running_oauth2_proxy(workdir: Path, issuer: str, audience: str, upstream: str, *,
                               port: int | None = None,
                               users: tuple[str, str] | None = None) -> AsyncIterator[str]:
    """oauth2-proxy as a Flyte 2 deployment runs it for tasks: bearer tokens only (no login
    for machines), the exchange server as an extra JWT issuer for `audience`; with `users`,
    also the (issuer, audience) of the organisation's IdP whose tokens people bring."""
    port = port or free_port()
    issuers = [f"{issuer}={audience}"] + ([f"{users[0]}={users[1]}"] if users else [])
    log = workdir / "oauth2-proxy.log"
    argv = [str(peers.oauth2_proxy()), f"--http-address=127.0.0.1:{port}",
            f"--upstream={upstream}", "--provider=oidc", f"--oidc-issuer-url={issuer}",
            "--client-id=flyte-auth-e2e", "--client-secret=unused",
            "--cookie-secret=" + base64.urlsafe_b64encode(os.urandom(24)).decode(),
            "--cookie-secure=false", "--email-domain=*", "--skip-jwt-bearer-tokens=true",
            "--extra-jwt-issuers=" + ",".join(issuers),
            f"--redirect-url=http://127.0.0.1:{port}/oauth2/callback"]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        await until_ok(proc, f"http://127.0.0.1:{port}/ping", log, "oauth2-proxy", 30, 0.1)
        yield f"http://127.0.0.1:{port}"
    except BaseException:
        print(log.read_text()[-3000:])
        raise
    finally:
        stop(proc, 10)
