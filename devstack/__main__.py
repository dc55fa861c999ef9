"""`make run`: the whole chain on this machine, with stand-ins for what only a cluster has.

In this process, on loopback: the stand-in Kubernetes API server (service-account issuer with
OIDC discovery, pods, TokenReview), a "kubelet" that writes the pod's projected token to
./run/sa-token and rotates it at 80 % of its life, and the stand-in FlyteAdmin (gRPC) with one
execution launched by a named user. As real processes: the exchange server in executor mode,
and the agent on ./run/agent.sock, which discovers the exchange server from FlyteAdmin.

It prints the round trip — pod, execution, the principal FlyteAdmin's UserInfo reports for the
agent's token — and the curl commands to see for yourself. --once exits after that (0 on
success); otherwise it serves until Ctrl-C or SIGTERM. --task-env FILE writes, once the round
trip has passed, the env the injector gives a task container (and the launcher's name) as
JSON: task_tests/ run flytekit on other Pythons against this chain.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from flyteidl.service import identity_pb2, identity_pb2_grpc

from devstack.issuer import write_token_file
from devstack.stack import SA_TOKEN_LIFETIME, rotate
from devstack.world import EXECUTOR, World
from flyte_auth_common import contract
from flyte_auth_common.client import AgentClient, AgentClientError
from flyte_auth_common.daemon import until_signalled
from flyte_auth_common.jwt import fingerprint, jwt_claims

RUN = Path("run")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # no C-core chatter when servers stop
BIN = Path(sys.executable).parent


class Failed(Exception):
    pass


@contextlib.asynccontextmanager
async def process(name: str, *argv: str, ready: str | None = None,
                  env_extra: dict[str, str] | None = None,
                  ) -> AsyncIterator[tuple[asyncio.subprocess.Process, dict[str, Any]]]:
    """Run a project CLI with JSON logs to run/NAME.log; with `ready`, wait for that log event
    and yield it. SIGTERM on exit."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYTE_")} | (env_extra or {})
    proc = await asyncio.create_subprocess_exec(str(BIN / name), *argv, env=env,
                                                stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    stderr = proc.stderr
    log = (RUN / f"{name}.log").open("wb")
    event: dict[str, Any] = {}
    while ready is not None:
        line = await stderr.readline()
        if not line:
            log.close()
            raise Failed(f"{name} exited before it was ready; see {RUN / (name + '.log')}")
        log.write(line)
        log.flush()
        with contextlib.suppress(ValueError):
            event = json.loads(line)
        if event.get("event") == ready:
            break

    async def copy() -> None:
        while line := await stderr.readline():
            log.write(line)
            log.flush()

    copier = asyncio.create_task(copy())
    try:
        yield proc, event
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await proc.wait()
        await copier
        log.close()


async def first_token(client: AgentClient, agent: asyncio.subprocess.Process) -> dict[str, Any]:
    async with asyncio.timeout(20):
        while True:
            if agent.returncode is not None:
                raise Failed(f"the agent exited with {agent.returncode}; "
                             f"see {RUN}/flyte-auth-agent.log")
            try:
                return dict(await asyncio.to_thread(client.token))
            except AgentClientError:
                await asyncio.sleep(0.05)  # the agent process is still starting


async def user_info(target: str, header: str, token: str) -> str:
    async with grpc.aio.insecure_channel(target) as channel:
        reply = await identity_pb2_grpc.IdentityServiceStub(channel).UserInfo(
            identity_pb2.UserInfoRequest(), metadata=((header, f"Bearer {token}"),), timeout=10)
    return str(reply.subject)


async def main(once: bool, task_env_file: Path | None = None) -> int:
    shutil.rmtree(RUN, ignore_errors=True)
    RUN.mkdir()
    token_file, sock = RUN / "sa-token", RUN / "agent.sock"
    world = await World(RUN / "world").start()
    pod = world.task_pod()
    def mint() -> str:
        return world.kube.token_for(pod, lifetime=SA_TOKEN_LIFETIME)

    write_token_file(token_file, mint())
    rotator = asyncio.create_task(rotate(token_file, mint, SA_TOKEN_LIFETIME))
    try:
        async with process("flyte-auth-exchange", "serve", *world.exchange_args(),
                           ready="exchange_started") as (_, started):
            world.metadata.token_endpoint = started["listen"] + "/oauth2/token"
            labels = pod["metadata"]["labels"]
            execution_env = {contract.ENV_EXECUTION_ID: labels["execution-id"],  # as propeller
                             contract.ENV_EXECUTION_PROJECT: labels["project"],  # sets them
                             contract.ENV_EXECUTION_DOMAIN: labels["domain"]}
            async with process("flyte-auth-agent", "serve", "--socket", str(sock),
                               "--token-file", str(token_file), "--admin-endpoint",
                               world.admin_target, "--admin-insecure",
                               env_extra=execution_env) as (agent, _):
                client = AgentClient(str(sock))
                body = await first_token(client, agent)
                config = await asyncio.to_thread(client.config)
                status = await asyncio.to_thread(client.status)
                header = config["authorization_metadata_key"]
                principal = await user_info(world.admin_target, header, body["access_token"])
                env = task_env(world, sock, execution_env)
                via_flytekit = await task_process(env)
                report(world, pod, started["listen"], body, status, header, principal, sock,
                       via_flytekit, once=once, config=dict(config))
                if principal != EXECUTOR or via_flytekit != EXECUTOR:
                    raise Failed(f"FlyteAdmin saw {principal!r} / {via_flytekit!r}, expected "
                                 f"{EXECUTOR!r}")
                if task_env_file is not None:
                    task_env_file.write_text(json.dumps({"env": env, "launcher": EXECUTOR}))
                if not once:
                    print("Serving until Ctrl-C.", flush=True)
                    await until_signalled()
        return 0
    except (Failed, AgentClientError, grpc.aio.AioRpcError, TimeoutError) as exc:
        print(f"make run: the round trip failed: {exc or type(exc).__name__}; logs in {RUN}/",
              file=sys.stderr)
        return 1
    finally:
        rotator.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await rotator
        await world.stop()


TASK_CODE = """
import os
from flytekit.configuration import Config
from flytekit.models.core.identifier import WorkflowExecutionIdentifier
from flytekit.remote import FlyteRemote
execution = FlyteRemote(Config.auto()).client.get_execution(WorkflowExecutionIdentifier(
    os.environ["FLYTE_INTERNAL_EXECUTION_PROJECT"], os.environ["FLYTE_INTERNAL_EXECUTION_DOMAIN"],
    os.environ["FLYTE_INTERNAL_EXECUTION_ID"]))
print(execution.spec.metadata.principal)
"""


def task_env(world: World, sock: Path, execution_env: dict[str, str]) -> dict[str, str]:
    """The FLYTE_* env the injector (and propeller) give a task container."""
    return execution_env | {
        contract.ENV_PLATFORM_URL: world.admin_target, contract.ENV_PLATFORM_INSECURE: "true",
        contract.ENV_AUTH_MODE: contract.PLUGIN_AUTH_MODE, contract.SOCKET_ENV: str(sock.resolve())}


async def task_process(task_env: dict[str, str]) -> str:
    """What a task does, as its own process (a task's gRPC channel ends with it, so no idle
    keepalive pings outlive it): FlyteRemote(Config.auto()) with the env the injector sets;
    the flyte-auth-agent plugin supplies the token. Returns the execution's principal."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYTE_")} | task_env
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", TASK_CODE, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise Failed(f"the task's flytekit call failed: {err.decode()[-800:]}")
    return out.decode().strip()


def report(world: World, pod: dict[str, Any], exchange_url: str, body: dict[str, Any],
           status: dict[str, Any], header: str, principal: str, sock: Path,
           via_flytekit: str, *, once: bool, config: dict[str, Any]) -> None:
    meta, claims = pod["metadata"], jwt_claims(body["access_token"]) or {}
    labels = meta["labels"]
    if once:
        tail = (f"The stack has stopped (ONCE=1). Run `make run` to keep it up, then fetch a "
                f"token yourself:\n  curl -s --unix-socket {sock} -H 'X-Flyte-Auth-Agent: 1' "
                f"http://localhost/v1/token")
    else:
        tail = (f"Fetch a token yourself (Ctrl-C stops the stack):\n"
                f"  curl -s --unix-socket {sock} -H 'X-Flyte-Auth-Agent: 1' "
                f"http://localhost/v1/token\n"
                f"  curl -s --unix-socket {sock} -H 'X-Flyte-Auth-Agent: 1' "
                f"http://localhost/v1/status")
    print(f"""
flyte-auth-agent: the round trip on this machine
(stand-ins: Kubernetes API server + kubelet, FlyteAdmin; real: exchange server, agent)

  pod             {meta["namespace"]}/{meta["name"]}  (service account \
{pod["spec"]["serviceAccountName"]}, token file {RUN / "sa-token"})
  execution       {labels["project"]}/{labels["domain"]}/{labels["execution-id"]}  launched by \
{EXECUTOR}
  exchange server {exchange_url}  (discovered by the agent from FlyteAdmin over gRPC)
  agent           {sock}  ({status["state"]}, next refresh {status["next_attempt_at"]})
  /v1/config      endpoint {config["endpoint"]}, execution {config["project"]}/\
{config["domain"]}/{config["execution_id"]}
  token           {fingerprint(body["access_token"])}  sub={claims.get("sub")} \
scp={claims.get("scp")} expires {body["expires_at"]}
  FlyteAdmin      UserInfo with `{header}: Bearer <token>` says: {principal}
  flytekit        FlyteRemote(Config.auto()) via the flyte-auth-agent plugin: GetExecution
                  says the execution's principal is {via_flytekit}

{tail}
Logs: {RUN}/flyte-auth-agent.log, {RUN}/flyte-auth-exchange.log
""", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--once", action="store_true", help="print the round trip and exit")
    parser.add_argument("--task-env", type=Path, metavar="FILE",
                        help="write a task container's env (JSON) here once the chain is up")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.once, args.task_env)))
