"""`make run`: the chain on this machine, with stand-ins for what only a cluster has.

Starts the stand-in cluster issuer (writes and rotates ./run/sa-token like the kubelet),
the stand-in token endpoint, and the real agent as its own process on ./run/agent.sock;
then fetches a token the way a task would and prints the round trip. With --once it
exits after printing (0 on success); otherwise it serves until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys
from pathlib import Path

from flyte_auth_agent import contract
from flyte_auth_agent.client import AgentClient, AgentClientError
from flyte_auth_agent.tokens import fingerprint, jwt_claims
from tests.support.cluster import StubIssuer
from tests.support.stack import SA_TOKEN_LIFETIME, rotate, until_signalled
from tests.support.token_endpoint import TokenEndpoint

RUN = Path("run")


async def first_token(client: AgentClient, agent: asyncio.subprocess.Process,
                      timeout: float = 15.0) -> contract.TokenBody:
    """Wait for the agent's socket, then for its first token (the agent itself waits up to
    its --wait-timeout for the exchange)."""
    async with asyncio.timeout(timeout):
        while True:
            if agent.returncode is not None:
                raise RuntimeError(f"the agent exited with {agent.returncode}; see run/agent.log")
            try:
                return await asyncio.to_thread(client.token)
            except AgentClientError:
                await asyncio.sleep(0.05)  # the agent process is still starting


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--once", action="store_true", help="print the round trip and exit")
    args = parser.parse_args()
    shutil.rmtree(RUN, ignore_errors=True)
    RUN.mkdir()
    token_file, sock = RUN / "sa-token", RUN / "agent.sock"

    issuer = StubIssuer()
    sa_token = issuer.write(token_file, lifetime=SA_TOKEN_LIFETIME)
    endpoint = TokenEndpoint(issuer)
    await endpoint.start()
    rotator = asyncio.create_task(rotate(issuer, token_file, SA_TOKEN_LIFETIME))
    agent_bin = str(Path(sys.executable).parent / "flyte-auth-agent")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYTE_AUTH_AGENT_")}
    with (RUN / "agent.log").open("wb") as log:
        agent = await asyncio.create_subprocess_exec(
            agent_bin, "serve", "--socket", str(sock), "--token-file", str(token_file),
            "--token-endpoint", endpoint.url, "--audience", "flyteadmin", "--scope", "all",
            stderr=log, env=env)
    try:
        body = await first_token(AgentClient(str(sock)), agent)
        status = await asyncio.to_thread(AgentClient(str(sock)).status)
        pod = (jwt_claims(sa_token) or {}).get("kubernetes.io", {})
        claims = jwt_claims(body["access_token"]) or {}
        print(f"""
flyte-auth-agent: local round trip (stand-ins: cluster issuer, token endpoint)

  pod             {pod["namespace"]}/{pod["pod"]["name"]}, service account \
{pod["serviceaccount"]["name"]}
  token file      {token_file} (rotated at 80% of {SA_TOKEN_LIFETIME} s, like the kubelet)
  token endpoint  {endpoint.url}  (RFC 8693 token exchange)
  agent           {sock}  (log: {RUN / "agent.log"})
  token           {fingerprint(body["access_token"])}  for {claims.get("sub")}
                  scope {body["scope"]!r}, expires {body["expires_at"]} \
(in {body["expires_in"]} s)
  agent state     {status["state"]}, next refresh {status["next_attempt_at"]}

Fetch a token yourself:
  curl -s --unix-socket {sock} -H 'X-Flyte-Auth-Agent: 1' http://localhost/v1/token
  curl -s --unix-socket {sock} -H 'X-Flyte-Auth-Agent: 1' http://localhost/v1/status
""", flush=True)
        if not args.once:
            print("Serving until Ctrl-C.", flush=True)
            await until_signalled()
        return 0
    except (AgentClientError, RuntimeError, TimeoutError) as exc:
        print(f"make run: the round trip failed: {exc or type(exc).__name__}; "
              f"see {RUN / 'agent.log'}", file=sys.stderr)
        return 1
    finally:
        if agent.returncode is None:
            agent.send_signal(signal.SIGTERM)
            await agent.wait()
        rotator.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await rotator
        await endpoint.stop()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
