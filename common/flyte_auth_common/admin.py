"""Reaching FlyteAdmin: its address as flytekit writes it, the TLS trust for it, and a gRPC
channel to it. The agent (discovery) and the exchange server (execution lookups) both dial
it; grpc is imported on first use, so a process that never dials FlyteAdmin never loads it.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flyte_auth_common.errors import ConfigError


@dataclass(frozen=True)
class AdminEndpoint:
    """FlyteAdmin as flytekit addresses it: HOST:PORT plus whether TLS is off."""

    host_port: str
    insecure: bool

    @property
    def http_base(self) -> str:
        return f"{'http' if self.insecure else 'https'}://{self.host_port}"


def parse_admin_endpoint(value: str, insecure: bool) -> AdminEndpoint:
    text = value.removeprefix("dns:///")
    if "://" in text:
        scheme, _, text = text.partition("://")
        if scheme not in ("http", "https"):
            raise ValueError(f"{value!r}: scheme must be http or https, or give HOST:PORT")
        insecure = insecure or scheme == "http"
        text = text.rstrip("/")
    if not text or "/" in text:
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. flyteadmin.flyte:81)")
    return AdminEndpoint(text, insecure)


def tls_material(ca_file: Path | None, setting: str, ca_pem: str | None = None,
                 ) -> tuple[ssl.SSLContext | bool, bytes | None]:
    """The TLS context for HTTP upstreams (the system store plus `ca_file` and `ca_pem`) and
    the PEM for gRPC. `setting` names the flag and env var in the error."""
    if ca_file is None and not ca_pem:
        return True, None
    try:
        pem = (ca_file.read_bytes() if ca_file is not None else b"") + \
            (ca_pem or "").encode("ascii")
        ctx = ssl.create_default_context()
        ctx.load_verify_locations(cadata=pem.decode("ascii"))
    except (OSError, ValueError, ssl.SSLError) as exc:
        where = ca_file if ca_file is not None else "the PEM text"
        raise ConfigError([f"{setting}: cannot load {where} as a PEM bundle "
                           f"({type(exc).__name__})"]) from None
    return ctx, pem


def admin_channel(admin: AdminEndpoint, ca_pem: bytes | None) -> Any:
    """A grpc.aio channel to FlyteAdmin: plaintext when insecure, else TLS trusting `ca_pem`
    (or the system roots). grpc is imported here, on first use."""
    import grpc  # noqa: PLC0415 - heavy; only what talks to FlyteAdmin loads it

    if admin.insecure:
        return grpc.aio.insecure_channel(admin.host_port)
    return grpc.aio.secure_channel(admin.host_port, grpc.ssl_channel_credentials(ca_pem))
