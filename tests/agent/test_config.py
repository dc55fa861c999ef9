from __future__ import annotations

from pathlib import Path

import pytest

from flyte_auth_agent.config import AgentConfig
from flyte_auth_common.admin import parse_admin_endpoint
from flyte_auth_common.errors import ConfigError

BASE = ["--token-endpoint", "https://idp.example/oauth2/token"]


def test_defaults_follow_the_contract() -> None:
    c = AgentConfig.load(BASE, {})
    assert c.socket == Path("/var/run/flyte-auth/agent.sock")
    assert c.token_file == Path("/var/run/secrets/flyte-auth/token")
    assert c.grant == "token-exchange"
    assert c.subject_token_type == "urn:ietf:params:oauth:token-type:jwt"
    assert c.socket_mode == 0o666
    assert c.allowed_uids is None
    assert c.admin is None


def test_env_sets_every_flag_and_flags_win() -> None:
    env = {
        "FLYTE_AUTH_AGENT_TOKEN_ENDPOINT": "http://env/oauth2/token",
        "FLYTE_AUTH_AGENT_SOCKET_MODE": "0600",
        "FLYTE_AUTH_AGENT_ALLOWED_UIDS": "1000, 1001",
        "FLYTE_AUTH_AGENT_HEALTH_ADDR": ":8081",
        "FLYTE_AUTH_AGENT_SCOPE": "all  offline",
        "FLYTE_AUTH_AGENT_ADMIN_ENDPOINT": "dns:///flyteadmin.flyte:81",
        "FLYTE_AUTH_AGENT_ADMIN_INSECURE": "true",
        "FLYTE_INTERNAL_EXECUTION_ID": "f3a1b2",
        "FLYTE_INTERNAL_EXECUTION_PROJECT": "flytesnacks",
        "FLYTE_INTERNAL_EXECUTION_DOMAIN": "development",
    }
    c = AgentConfig.load(["--socket-mode", "0660"], env)
    assert c.token_endpoint == "http://env/oauth2/token"
    assert c.socket_mode == 0o660  # the flag beats the env var
    assert c.allowed_uids == frozenset({1000, 1001})
    assert c.health_addr == ("0.0.0.0", 8081)
    assert c.scope == "all offline"
    assert c.admin is not None and c.admin.host_port == "flyteadmin.flyte:81"
    assert c.admin.insecure
    assert (c.execution.execution_id, c.execution.project, c.execution.domain) == (
        "f3a1b2", "flytesnacks", "development")


@pytest.mark.parametrize(("argv", "expected"), [
    pytest.param(["--socket-mode", "999"], "--socket-mode / FLYTE_AUTH_AGENT_SOCKET_MODE: '999' "
                 "is not an octal file mode", id="socket-mode"),
    pytest.param(["--grant", "password"], "--grant / FLYTE_AUTH_AGENT_GRANT: 'password' is not "
                 "one of token-exchange, client-assertion", id="grant"),
    pytest.param(["--allowed-uids", "root"], "--allowed-uids / FLYTE_AUTH_AGENT_ALLOWED_UIDS: "
                 "'root' is not a numeric uid", id="uids"),
    pytest.param(["--health-addr", "8081"], "--health-addr / FLYTE_AUTH_AGENT_HEALTH_ADDR: '8081' "
                 "is not HOST:PORT", id="health-addr"),
    pytest.param(["--wait-timeout", "-1"], "--wait-timeout / FLYTE_AUTH_AGENT_WAIT_TIMEOUT: '-1' "
                 "must be a finite number greater than 0", id="wait-timeout"),
    pytest.param(["--wait-timeout", "inf"], "--wait-timeout / FLYTE_AUTH_AGENT_WAIT_TIMEOUT: "
                 "'inf' must be a finite number", id="wait-timeout-inf"),
    pytest.param(["--idle-timeout", "5"], "--idle-timeout / FLYTE_AUTH_AGENT_IDLE_TIMEOUT: 5 s "
                 "must exceed --wait-timeout (5 s)", id="idle-below-wait"),
    pytest.param(["--max-connections", "0"], "--max-connections / "
                 "FLYTE_AUTH_AGENT_MAX_CONNECTIONS: '0' is not a whole number", id="max-conn"),
    pytest.param(["--log-format", "xml"], "--log-format / FLYTE_AUTH_AGENT_LOG_FORMAT", id="fmt"),
    pytest.param(["--client-secret-file", "/s"], "--client-secret-file / "
                 "FLYTE_AUTH_AGENT_CLIENT_SECRET_FILE: needs a client id", id="secret-no-id"),
    pytest.param(["--grant", "client-assertion", "--subject-token-type", "urn:x"],
                 "--subject-token-type / FLYTE_AUTH_AGENT_SUBJECT_TOKEN_TYPE: applies to --grant "
                 "token-exchange only", id="assertion-with-subject-type"),
    pytest.param(["--grant", "client-assertion", "--client-id", "c", "--client-secret-file", "/s"],
                 "--client-secret-file / FLYTE_AUTH_AGENT_CLIENT_SECRET_FILE: cannot be combined "
                 "with --grant client-assertion", id="assertion-with-secret"),
    pytest.param(["--admin-endpoint", "grpc://x:81"], "--admin-endpoint / "
                 "FLYTE_AUTH_AGENT_ADMIN_ENDPOINT: 'grpc://x:81': scheme must be", id="admin"),
])
def test_each_bad_value_is_one_line_naming_flag_and_env(argv: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        AgentConfig.load(BASE + argv, {})
    assert any(line.startswith(expected) for line in err.value.problems), err.value.problems


def test_bad_env_value_is_reported_like_a_flag() -> None:
    with pytest.raises(ConfigError) as err:
        AgentConfig.load(BASE, {"FLYTE_AUTH_AGENT_SOCKET_MODE": "rw"})
    assert err.value.problems == [
        "--socket-mode / FLYTE_AUTH_AGENT_SOCKET_MODE: 'rw' is not an octal file mode (e.g. 0660)"]


def test_all_problems_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        AgentConfig.load(["--socket-mode", "x", "--grant", "y"], {})
    names = [line.split(":")[0] for line in err.value.problems]
    assert names == ["--token-endpoint / FLYTE_AUTH_AGENT_TOKEN_ENDPOINT",
                     "--grant / FLYTE_AUTH_AGENT_GRANT",
                     "--socket-mode / FLYTE_AUTH_AGENT_SOCKET_MODE"]


@pytest.mark.parametrize(("value", "insecure_flag", "host_port", "insecure"), [
    ("flyteadmin.flyte:81", False, "flyteadmin.flyte:81", False),
    ("dns:///flyteadmin.flyte:81", True, "flyteadmin.flyte:81", True),
    ("http://localhost:30080/", False, "localhost:30080", True),
    ("https://flyte.example.com", False, "flyte.example.com", False),
])
def test_admin_endpoint_forms(value: str, insecure_flag: bool, host_port: str,
                              insecure: bool) -> None:
    admin = parse_admin_endpoint(value, insecure_flag)
    assert (admin.host_port, admin.insecure) == (host_port, insecure)
