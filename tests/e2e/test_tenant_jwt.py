"""The tenant id from a trusted source: envoy-config/envoy-jwt.yaml (jwt_authn + tenants.jwt_claim)
against a real Envoy.

The shipped variant fetches the identity provider's JWKS; here the provider's keys are inline (an
HS256 key made by the test), everything else is the committed file. Tokens are signed with the
standard library.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
import time

import pytest
import yaml

import harness
from harness import post_raw

CHAT = "/v1/chat/completions"

JWT_CONFIG = harness.REPO_ROOT / "envoy-config" / "envoy-jwt.yaml"
SECRET = b"llm-router-e2e-test-signing-key-0123456789abcdef"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(claims: dict, secret: bytes = SECRET) -> str:
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "e2e"}).encode())
    body = b64url(json.dumps(claims).encode())
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(sig)}"


def claims(org: str | None) -> dict:
    c = {"iss": "https://idp.example.com", "aud": "llm-gateway", "exp": int(time.time()) + 3600}
    if org is not None:
        c["org"] = org
    return c


def test_committed_file_is_the_generators_output():
    r = subprocess.run([sys.executable, str(harness.REPO_ROOT / "scripts" / "gen-jwt-config.py"),
                        "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def jwt_gw(envoy_bin, mocks):
    cfg = yaml.safe_load(JWT_CONFIG.read_text())
    listener, admin = harness.free_port(), harness.free_port()
    cfg["admin"]["address"]["socket_address"]["port_value"] = admin
    cfg["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = listener
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    (jwt,) = [f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.jwt_authn"]
    provider = jwt["typed_config"]["providers"]["idp"]
    del provider["remote_jwks"]
    jwks = {"keys": [{"kty": "oct", "alg": "HS256", "kid": "e2e", "k": b64url(SECRET)}]}
    provider["local_jwks"] = {"inline_string": json.dumps(jwks)}
    path = harness.write_config(json.dumps(cfg, indent=1), "envoy-jwt-e2e.yaml")
    with harness.start_envoy(path) as envoy:
        yield envoy, listener


def chat(port: int, headers: dict) -> harness.Response:
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    return post_raw(CHAT, json.dumps(body), headers, port=port)


def test_the_tenant_is_the_verified_claim_not_the_client_header(jwt_gw):
    _, port = jwt_gw
    bearer = {"authorization": f"Bearer {token(claims('acme'))}"}
    r = chat(port, bearer)
    assert r.status == 200, r.text[:300]
    # acme's configured limit (60 requests a minute), not the default tenants' 600.
    assert r.headers.get("x-ratelimit-limit-requests") == "60", r.headers
    # A client header naming another tenant changes nothing: still acme's bucket, one less.
    before = int(r.headers["x-ratelimit-remaining-requests"])
    r2 = chat(port, {**bearer, "x-tenant-id": "someone-else"})
    assert r2.status == 200, r2.text[:300]
    assert r2.headers.get("x-ratelimit-limit-requests") == "60"
    assert int(r2.headers["x-ratelimit-remaining-requests"]) == before - 1


def test_another_claim_is_another_tenant(jwt_gw):
    _, port = jwt_gw
    r = chat(port, {"authorization": f"Bearer {token(claims('globex'))}"})
    assert r.status == 200, r.text[:300]
    assert r.headers.get("x-ratelimit-limit-requests") == "600", r.headers


@pytest.mark.parametrize("case", ["no token", "forged signature", "expired"])
def test_requests_without_a_valid_token_never_reach_a_pool(jwt_gw, case):
    _, port = jwt_gw
    headers = {"x-tenant-id": "acme"}
    if case == "forged signature":
        headers["authorization"] = f"Bearer {token(claims('acme'), secret=b'not-the-key' * 4)}"
    elif case == "expired":
        c = claims("acme")
        c["exp"] = int(time.time()) - 600  # past jwt_authn's 60 s clock skew
        headers["authorization"] = f"Bearer {token(c)}"
    r = chat(port, headers)
    assert r.status == 401, (r.status, r.text[:300])
    assert "x-mock-instance" not in r.headers
