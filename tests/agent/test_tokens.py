from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from devstack.issuer import StubIssuer
from flyte_auth_agent.errors import OAuthError, SubjectTokenError, UpstreamError
from flyte_auth_agent.tokens import (
    DEFAULT_LIFETIME,
    MAX_LIFETIME,
    MAX_SUBJECT_TOKEN_BYTES,
    AccessToken,
    parse_token_response,
    read_subject_token,
)
from flyte_auth_common.contract import rfc3339

NOW = 1_800_000_000.0
SUBJECT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW0ifQ.c2lnbmF0dXJl"


def ok(**fields: object) -> bytes:
    return json.dumps({"access_token": "opaque-abc", "token_type": "Bearer", **fields}).encode()


def test_success_with_expires_in() -> None:
    tok = parse_token_response(200, "application/json", ok(expires_in=600, scope="all"), now=NOW)
    assert tok.value == "opaque-abc"
    assert (tok.expires_at, tok.scope) == (NOW + 600, "all")
    assert tok.fingerprint.startswith("sha256:") and "opaque-abc" not in tok.fingerprint
    assert "opaque-abc" not in repr(tok)


def test_without_expires_in_uses_the_jwt_exp(issuer: StubIssuer) -> None:
    jwt = issuer.mint(now=NOW, lifetime=900)
    body = json.dumps({"access_token": jwt, "token_type": "bearer"}).encode()
    assert parse_token_response(200, "application/json", body, now=NOW).expires_at == NOW + 900


@pytest.mark.parametrize("expires_in", [1e12, 10**30, "1e12"], ids=["1e12", "huge-int", "quoted"])
def test_an_absurd_lifetime_is_capped(expires_in: object) -> None:
    tok = parse_token_response(200, "application/json", ok(expires_in=expires_in), now=NOW)
    assert tok.expires_at == NOW + MAX_LIFETIME
    rfc3339(tok.expires_at)  # representable: status and /v1/token can print it


def test_the_jwt_exp_wins_when_it_is_earlier(issuer: StubIssuer) -> None:
    jwt = issuer.mint(now=NOW, lifetime=120)
    body = json.dumps({"access_token": jwt, "token_type": "Bearer", "expires_in": 3600})
    assert parse_token_response(200, "application/json", body.encode(),
                                now=NOW).expires_at == NOW + 120


def test_a_jwt_already_expired_is_refused_whatever_expires_in_says(issuer: StubIssuer) -> None:
    jwt = issuer.mint(now=NOW - 7200, lifetime=3600)
    body = json.dumps({"access_token": jwt, "token_type": "Bearer", "expires_in": 12})
    with pytest.raises(UpstreamError, match="exp has already passed"):
        parse_token_response(200, "application/json", body.encode(), now=NOW)


def test_without_any_lifetime_assumes_a_short_one() -> None:
    tok = parse_token_response(200, "application/json; charset=utf-8", ok(), now=NOW)
    assert tok.expires_at == NOW + DEFAULT_LIFETIME


@pytest.mark.parametrize(("status", "ctype", "body", "kind", "message"), [
    pytest.param(400, "application/json", b'{"error":"invalid_grant","error_description":"pod '
                 b'gone"}', "oauth:invalid_grant", "refused the exchange with invalid_grant (HTTP "
                 "400): pod gone", id="rfc6749-error"),
    pytest.param(401, "application/json", b'{"error":"invalid_client"}', "oauth:invalid_client",
                 "invalid_client (HTTP 401)", id="invalid-client"),
    pytest.param(400, "application/json", b'{"error":"made_up"}', "oauth:other", "made_up",
                 id="unknown-code"),
    pytest.param(502, "text/html", b"<html><body>Bad Gateway</body></html>", "http_error",
                 "HTTP 502 with a non-JSON body (text/html, 37 bytes)", id="html-error-page"),
    pytest.param(200, "text/plain", b"hello", "bad_response", "not a JSON object", id="garbage"),
    pytest.param(200, "application/json", b"[1,2]", "bad_response", "not a JSON object",
                 id="json-array"),
    pytest.param(200, "application/json", b'{"token_type":"Bearer"}', "bad_response",
                 "no access_token", id="missing-access-token"),
    pytest.param(200, "application/json", b'{"access_token":"x","token_type":"mac"}',
                 "bad_response", "token_type 'mac'", id="wrong-token-type"),
    pytest.param(200, "application/json", b'{"access_token":"x","token_type":"Bearer",'
                 b'"expires_in":"soon"}', "bad_response", "expires_in that is not a finite number",
                 id="bad-expires-in"),
    pytest.param(200, "application/json", b'{"access_token":"x","token_type":"Bearer",'
                 b'"expires_in":NaN}', "bad_response", "not a finite number", id="nan-lifetime"),
    pytest.param(200, "application/json", b'{"access_token":"x","token_type":"Bearer",'
                 b'"expires_in":Infinity}', "bad_response", "not a finite number",
                 id="infinite-lifetime"),
    pytest.param(200, "application/json", b'{"access_token":"x","token_type":"Bearer",'
                 b'"expires_in":-5}', "bad_response", "expires in -5 s", id="negative-lifetime"),
    pytest.param(200, "application/json", b'{"access_token":"x","token_type":"Bearer",'
                 b'"expires_in":0}', "bad_response", "expires in 0 s", id="zero-lifetime"),
    pytest.param(500, "application/json", b'{"message":"boom"}', "http_error",
                 "without an RFC 6749 error code", id="json-without-error"),
])
def test_bad_responses_become_clear_errors(status: int, ctype: str, body: bytes, kind: str,
                                           message: str) -> None:
    with pytest.raises(UpstreamError) as err:
        parse_token_response(status, ctype, body, now=NOW)
    assert err.value.kind == kind
    assert message in str(err.value)


def test_non_retryable_codes_are_marked() -> None:
    for code, retryable in [("invalid_client", False), ("unsupported_grant_type", False),
                            ("invalid_grant", True), ("temporarily_unavailable", True)]:
        with pytest.raises(OAuthError) as err:
            parse_token_response(400, "application/json", json.dumps({"error": code}).encode(),
                                 now=NOW)
        assert err.value.retryable is retryable


def test_an_upstream_that_echoes_the_subject_token_cannot_leak_it() -> None:
    body = json.dumps({"error": "invalid_grant",
                       "error_description": f"bad token {SUBJECT} (secret s3cr3t)"}).encode()
    with pytest.raises(OAuthError) as err:
        parse_token_response(400, "application/json", body, now=NOW, secrets=("s3cr3t",))
    assert SUBJECT not in str(err.value)
    assert "s3cr3t" not in str(err.value)
    assert "[redacted" in str(err.value)


def test_read_subject_token(tmp_path: Path, issuer: StubIssuer) -> None:
    path = tmp_path / "token"
    token = issuer.write(path)
    assert read_subject_token(path) == token
    path.write_text(token + "\n")
    assert read_subject_token(path) == token


@pytest.mark.parametrize(("content", "message"), [
    pytest.param(None, "does not exist", id="missing"),
    pytest.param("", "is empty", id="empty"),
    pytest.param("not-a-jwt", "does not hold a JWT", id="not-jwt"),
    pytest.param("a.b", "does not hold a JWT", id="two-parts"),
    pytest.param("aaa.!!!.ccc", "does not hold a JWT", id="bad-base64"),
])
def test_unusable_subject_token_file_names_the_path(tmp_path: Path, content: str | None,
                                                    message: str) -> None:
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SubjectTokenError) as err:
        read_subject_token(path)
    assert str(path) in str(err.value)
    assert message in str(err.value)
    assert "--token-file" in str(err.value)


def test_a_fifo_or_an_oversized_file_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # nobody writes: a blocking read would hang the agent's event loop
    with pytest.raises(SubjectTokenError, match="is not a regular file"):
        read_subject_token(fifo)
    big = tmp_path / "big"
    big.write_text("a" * (MAX_SUBJECT_TOKEN_BYTES + 1))
    with pytest.raises(SubjectTokenError, match="is larger than"):
        read_subject_token(big)


def test_token_file_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(SubjectTokenError, match="is a directory"):
        read_subject_token(tmp_path)


def test_access_token_lifetime() -> None:
    tok = AccessToken.create("t", issued_at=10.0, expires_at=70.0, scope="")
    assert tok.lifetime == 60.0
