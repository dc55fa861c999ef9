"""oauth2-proxy (built from the Go module proxy by devstack.real.peers) as Flyte 2's auth
proxy: bearer tokens only, an OIDC provider for its required login configuration, and extra
JWT issuers it trusts."""

from __future__ import annotations

import base64
import contextlib
import os
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import yaml

from devstack.real import peers
from devstack.real.cluster import free_port
from devstack.real.process import stop, until_ok


@contextlib.asynccontextmanager
async def running_oauth2_proxy(workdir: Path, issuer: str, audience: str, upstream: str, *,
                               port: int | None = None, users: tuple[str, str] | None = None,
                               tls: tuple[Path, Path, Path] | None = None,
                               ) -> AsyncIterator[str]:
    """oauth2-proxy as a Flyte 2 deployment runs it for tasks: bearer tokens only (no login
    for machines), the exchange server as an extra JWT issuer for `audience`; with `users`,
    also the (issuer, audience) of the organisation's IdP whose tokens people bring; with
    `tls` (certificate, key and CA PEM files), serving HTTPS only. Yields its URL."""
    port = port or free_port()
    issuers = [f"{issuer}={audience}"] + ([f"{users[0]}={users[1]}"] if users else [])
    scheme = "https" if tls else "http"
    log = workdir / "oauth2-proxy.log"
    # What its alpha configuration holds (listeners, upstream, provider) ...
    served = [f"--http-address=127.0.0.1:{free_port() if tls else port}",
              f"--upstream={upstream}", "--provider=oidc", f"--oidc-issuer-url={issuer}",
              "--client-id=flyte-auth-e2e", "--client-secret=unused"]
    if tls:
        served += [f"--https-address=127.0.0.1:{port}", f"--tls-cert-file={tls[0]}",
                   f"--tls-key-file={tls[1]}"]
    # ... and what stays a flag.
    rest = ["--cookie-secret=" + base64.urlsafe_b64encode(os.urandom(24)).decode(),
            "--cookie-secure=false", "--email-domain=*", "--skip-jwt-bearer-tokens=true",
            "--extra-jwt-issuers=" + ",".join(issuers),
            f"--redirect-url={scheme}://127.0.0.1:{port}/oauth2/callback"]
    configured = [f"--alpha-config={_alpha_config(workdir, served)}"] if tls else served
    argv = [str(peers.oauth2_proxy()), *configured, *rest]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"{scheme}://127.0.0.1:{port}"
        trusted = ssl.create_default_context(cafile=tls[2]) if tls else True
        await until_ok(proc, url + "/ping", log, "oauth2-proxy", 30, 0.1, ssl_ctx=trusted)
        yield url
    except BaseException:
        print(log.read_text()[-3000:])
        raise
    finally:
        stop(proc, 10)


def _alpha_config(workdir: Path, served: list[str]) -> Path:
    """The proxy's own conversion of `served` to its alpha configuration, plus
    `X-Forwarded-Proto: https` on what it forwards: as a TLS-terminating ingress sends it.
    The Flyte 2 backend names its own URL from that header (ClusterService.SelectCluster),
    and oauth2-proxy sets it only from what its client sent."""
    converted = subprocess.run([str(peers.oauth2_proxy()), "--convert-config-to-alpha",
                                *served, "--cookie-secret=" + "0" * 32],
                               capture_output=True, text=True, check=True).stdout
    config = yaml.safe_load(converted)
    config["injectRequestHeaders"].append({
        "name": "X-Forwarded-Proto",
        "values": [{"secretSource": {"value": "https"}}]})
    path = workdir / "oauth2-proxy-alpha.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
