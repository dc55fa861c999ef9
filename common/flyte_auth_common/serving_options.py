"""A server's address and serving certificate: the options every server shares, and the
Serving they read into. Stdlib only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flyte_auth_common.converters import to_host_port, to_path
from flyte_auth_common.options import Option, Settings


@dataclass(frozen=True)
class Serving:
    """Where a server listens and which certificate it serves (serving_options())."""

    listen: tuple[str, int]
    tls_cert: Path | None
    tls_key: Path | None
    tls_bootstrap: str | None  # the Secret a self-signed pair is kept in
    tls_dir: Path  # where a bootstrapped pair is written to be served
    service: str  # the Service: the bootstrapped certificate's DNS names

    @property
    def https(self) -> bool:
        return self.tls_bootstrap is not None or self.tls_cert is not None


def serving_options(name: str, *, serves: str, bootstrap_also: str) -> tuple[Option, ...]:
    """A server's address and serving-certificate options (Settings.serving_tls reads them):
    `name` is its Service and names its --tls-dir; `serves` what --listen serves;
    `bootstrap_also` what --tls-bootstrap does besides serving HTTPS."""
    return (
        Option("--listen", f"address {serves} is served on", "0.0.0.0:8443",
               metavar="HOST:PORT"),
        Option("--tls-cert", "TLS certificate chain (PEM); with --tls-key, serve HTTPS; "
               "reloaded when the file changes", metavar="FILE"),
        Option("--tls-key", "TLS private key (PEM), reloaded when the file changes",
               metavar="FILE"),
        Option("--tls-bootstrap", "no cert-manager: keep a self-signed CA and serving "
               "certificate in this Secret (created, renewed 30 days before expiry), serve "
               f"HTTPS with it and {bootstrap_also}; instead of --tls-cert/--tls-key",
               metavar="SECRET"),
        Option("--tls-dir", "where --tls-bootstrap writes the pair it serves (a writable "
               "emptyDir)", f"/var/run/{name}", metavar="DIR"),
        Option("--service", "this server's Service (DNS names of the bootstrapped "
               "certificate)", name, metavar="NAME"),
    )


def serving_from(s: Settings) -> Serving:
    """A server's serving_options(): its address and its certificate, a pair of files,
    or a Secret to bootstrap into, or neither."""
    cert, key = s.get("tls_cert", to_path), s.get("tls_key", to_path)
    if (cert is None) != (key is None):
        s.problem("tls_cert" if cert is None else "tls_key",
                     "--tls-cert and --tls-key go together: give both or neither")
    bootstrap = s.text("tls_bootstrap")
    if bootstrap and cert is not None:
        s.problem("tls_bootstrap", "give --tls-bootstrap or --tls-cert/--tls-key, not both")
    return Serving(s.value("listen", to_host_port), cert, key, bootstrap,
                   s.value("tls_dir", to_path), s.value("service", str))
