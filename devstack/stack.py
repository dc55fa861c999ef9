"""A local stand-in of the agent's upstream, as one process: the service-account issuer
writes a projected token file (and rotates it like the kubelet, at 80 % of its life) and a
token endpoint trades it. Used by the benchmark and `make run`; see issuer.py and
token_endpoint.py for the behaviour each stand-in follows.

    python -m devstack.stack --dir DIR   prints one JSON line {"token_endpoint", "token_file"}
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import Callable
from pathlib import Path

from devstack.issuer import StubIssuer, write_token_file
from devstack.token_endpoint import TokenEndpoint
from flyte_auth_common.daemon import until_signalled

SA_TOKEN_LIFETIME = 3600


async def rotate(path: Path, mint: Callable[[], str], lifetime: int) -> None:
    """Rewrite the token file at 80 % of the token's life, as the kubelet does."""
    while True:
        await asyncio.sleep(lifetime * 0.8)
        write_token_file(path, mint())


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, required=True, help="where to write the token file")
    parser.add_argument("--lifetime", type=int, default=3600, help="access token lifetime (s)")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    issuer = StubIssuer()
    token_file = args.dir / "sa-token"
    issuer.write(token_file, lifetime=SA_TOKEN_LIFETIME)
    endpoint = TokenEndpoint(issuer, lifetime=args.lifetime)
    url = await endpoint.start()
    print(json.dumps({"token_endpoint": url, "token_file": str(token_file)}), flush=True)
    rotator = asyncio.create_task(rotate(
        token_file, lambda: issuer.mint(lifetime=SA_TOKEN_LIFETIME), SA_TOKEN_LIFETIME))
    await until_signalled()
    rotator.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await rotator
    await endpoint.stop()


if __name__ == "__main__":
    asyncio.run(main())
