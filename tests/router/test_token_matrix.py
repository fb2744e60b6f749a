"""Who may do what: every credential kind against every route kind, exact status and code."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ops import keys
from tests.support.app import ADMIN, InProcess, bearer
from tests.support.http_contract import assert_error_shape


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _server_key(app: InProcess) -> Ed25519PrivateKey:
    return keys.signing_key(None, app.server.settings.data_dir)


def _signed(app: InProcess, claims: dict[str, Any]) -> str:
    return jwt.encode(claims, _server_key(app), algorithm="EdDSA")


def _expired(app: InProcess) -> str:
    return _signed(app, {"sub": "acme", "a": "rw", "exp": int(time.time()) - 60})


def _other_key(app: InProcess) -> str:
    claims = {"sub": "acme", "a": "rw", "exp": int(time.time()) + 600}
    return jwt.encode(claims, Ed25519PrivateKey.generate(), algorithm="EdDSA")


def _tampered(app: InProcess) -> str:
    """A genuine token for `other` whose payload was rewritten to name `acme`."""
    header, _, signature = app.token("other").split(".")
    payload = _b64(json.dumps({"sub": "acme", "a": "rw", "exp": int(time.time()) + 600}).encode())
    return f"{header}.{payload}.{signature}"


def _alg_none(app: InProcess) -> str:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = _b64(json.dumps({"sub": "acme", "a": "rw", "exp": int(time.time()) + 600}).encode())
    return f"{header}.{payload}."


def _hs256_public_key(app: InProcess) -> str:
    """The classic algorithm-confusion forgery: HMAC keyed with the server's public key."""
    public = _server_key(app).public_key()
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64(json.dumps({"sub": "acme", "a": "rw", "exp": int(time.time()) + 600}).encode())
    signature = _b64(hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    return f"{header}.{payload}.{signature}"


Headers = dict[str, str]
CREDENTIALS: dict[str, Callable[[InProcess], Headers]] = {
    "admin": lambda app: ADMIN,
    "rw": lambda app: bearer(app.token("acme", "rw")),
    "ro": lambda app: bearer(app.token("acme", "ro")),
    "other_tenant": lambda app: bearer(app.token("other", "rw")),
    "expired": lambda app: bearer(_expired(app)),
    "forged_other_key": lambda app: bearer(_other_key(app)),
    "forged_tampered_payload": lambda app: bearer(_tampered(app)),
    "forged_alg_none": lambda app: bearer(_alg_none(app)),
    "forged_hs256_public_key": lambda app: bearer(_hs256_public_key(app)),
    "wrong_admin_key": lambda app: bearer("not-the-admin-key"),
    "malformed_scheme": lambda app: {"Authorization": f"Basic {app.token('acme')}"},
    "malformed_no_scheme": lambda app: {"Authorization": app.token("acme")},
    "malformed_empty_bearer": lambda app: {"Authorization": "Bearer "},
    "malformed_garbage": lambda app: bearer("a.b.c"),
    "missing": lambda app: {},
}

# route kind -> (method, path, body); "{new}" is a fresh tenant id, "victim" a tenant to delete
ROUTES: dict[str, tuple[str, str, Any]] = {
    "query_read": ("POST", "/v1/tenants/acme/query", {"sql": "select count(*) from t"}),
    "query_write": ("POST", "/v1/tenants/acme/query", {"sql": "insert into t values (1)"}),
    "batch_read": ("POST", "/v1/tenants/acme/batch", {"statements": [{"sql": "select x from t"}]}),
    "batch_write": (
        "POST",
        "/v1/tenants/acme/batch",
        {"statements": [{"sql": "select 1"}, {"sql": "insert into t values (2)"}]},
    ),
    "admin_create": ("POST", "/v1/admin/tenants", {"id": "fresh"}),
    "admin_list": ("GET", "/v1/admin/tenants", None),
    "admin_info": ("GET", "/v1/admin/tenants/acme", None),
    "admin_delete": ("DELETE", "/v1/admin/tenants/victim", None),
    "token_mint": ("POST", "/v1/admin/tenants/acme/tokens", {"access": "ro", "expires_in": 60}),
    # last: it ends the `other_tenant` credential's token
    "token_revoke": ("POST", "/v1/admin/tenants/other/tokens/revoke", None),
}

ADMIN_ROUTES = ("admin_create", "admin_list", "admin_info", "admin_delete", "token_mint", "token_revoke")
OK = {
    "query_read": 200,
    "query_write": 200,
    "batch_read": 200,
    "batch_write": 200,
    "admin_create": 201,
    "admin_list": 200,
    "admin_info": 200,
    "admin_delete": 204,
    "token_mint": 200,
    "token_revoke": 200,
}


def expected(credential: str, route: str) -> tuple[int, str | None]:
    """(status, error code) the contract demands."""
    if credential == "admin":
        return OK[route], None
    if credential in ("rw", "ro", "other_tenant"):
        if route in ADMIN_ROUTES or credential == "other_tenant":
            return 403, "forbidden"
        if credential == "ro" and route.endswith("_write"):
            return 403, "sql_not_allowed"
        return OK[route], None
    return 401, "unauthorized"


@pytest.mark.parametrize("credential", list(CREDENTIALS))
def test_every_route_kind_answers_each_credential_as_the_contract_says(
    app: InProcess, credential: str
) -> None:
    for tenant in ("acme", "other", "victim"):
        app.create(tenant)
    app.query("acme", "create table t(x)")
    headers = CREDENTIALS[credential](app)
    wrong = []
    for route, (method, path, body) in ROUTES.items():
        r = app.client.request(method, path, json=body, headers=headers)
        status, code = expected(credential, route)
        got_code = r.json()["error"]["code"] if r.status_code >= 400 else None
        if (r.status_code, got_code) != (status, code):
            wrong.append(f"{route}: expected {status} {code}, got {r.status_code} {r.text[:200]}")
        if r.status_code >= 400:
            assert_error_shape(r)
        if r.status_code == 401:
            assert r.headers["www-authenticate"].startswith("Bearer")
    assert not wrong, "\n".join(wrong)
    _assert_side_effects(app, credential)


def _assert_side_effects(app: InProcess, credential: str) -> None:
    """Refused requests changed nothing; allowed ones did exactly what they said."""
    rows = app.query("acme", "select x from t order by x").json()["rows"]
    ids = {t["id"] for t in app.client.get("/v1/admin/tenants", headers=ADMIN).json()["tenants"]}
    if credential in ("admin", "rw"):
        assert rows == [[1], [2]]
    else:
        assert rows == []  # ro's writes were refused, inside /batch too (atomically)
    assert ("fresh" in ids) == (credential == "admin")
    assert ("victim" in ids) == (credential != "admin")


def test_ro_token_is_refused_writes_of_every_kind_but_reads(app: InProcess) -> None:
    app.create("acme")
    app.query("acme", "create table t(x)")
    app.query("acme", "insert into t values (7)")
    ro = app.token("acme", "ro")
    for sql in (
        "insert into t values (1)",
        "update t set x = 2",
        "delete from t",
        "create table u(y)",
        "drop table t",
        "create temp table tt(y)",
        "replace into t values (3)",
        "pragma user_version = 5",
        "pragma query_only = 0",
    ):
        r = app.query("acme", sql, token=ro)
        assert r.status_code == 403, (sql, r.text)
        assert r.json()["error"]["code"] == "sql_not_allowed", (sql, r.text)
    assert app.query("acme", "select x from t", token=ro).json()["rows"] == [[7]]
    assert app.query("acme", "pragma user_version", token=ro).json()["rows"] == [[0]]
    # the rw token right after still writes: read-only was per request, not sticky
    assert app.query("acme", "insert into t values (8)", token=app.token("acme")).status_code == 200


def test_ro_write_inside_a_batch_names_the_index_and_commits_nothing(app: InProcess) -> None:
    app.create("acme")
    app.query("acme", "create table t(x)")
    ro = app.token("acme", "ro")
    body = {"statements": [{"sql": "select 1"}, {"sql": "select 2"}, {"sql": "insert into t values (1)"}]}
    r = app.client.post("/v1/tenants/acme/batch", json=body, headers=bearer(ro))
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "sql_not_allowed"
    assert r.json()["error"]["index"] == 2
    assert app.query("acme", "select count(*) from t").json()["rows"] == [[0]]


def test_token_of_a_missing_tenant_on_its_own_path_is_404_not_401(app: InProcess) -> None:
    app.create("acme")
    token = app.token("acme")
    assert app.client.delete("/v1/admin/tenants/acme", headers=ADMIN).status_code == 204
    r = app.query("acme", "select 1", token=token)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "tenant_not_found"


def test_token_claims_other_than_ro_rw_are_refused(app: InProcess) -> None:
    app.create("acme")
    exp = int(time.time()) + 600
    for claims in (
        {"sub": "acme", "a": "admin", "exp": exp},
        {"sub": "acme", "a": ["rw"], "exp": exp},
        {"sub": "acme", "a": "rw"},
        {"sub": "acme", "a": "rw", "exp": "later"},
        {"a": "rw", "exp": exp},
        {"sub": 5, "a": "rw", "exp": exp},
        {"sub": "acme", "a": "rw", "exp": exp, "nbf": exp},
    ):
        r = app.query("acme", "select 1", token=_signed(app, claims))
        assert r.status_code == 401, (claims, r.text)
        assert r.json()["error"]["code"] == "unauthorized"


def test_a_cached_token_stops_working_when_it_expires(app: InProcess) -> None:
    app.create("acme")
    # whole seconds (JWT `exp`): 3-4 s of validity, room for two requests on a busy machine
    exp = int(time.time()) + 4
    row = app.server.fleet.catalog.get("acme")
    assert row is not None
    binding = {"inc": row.incarnation, "gen": row.token_generation}  # as minted tokens carry
    token = _signed(app, {"sub": "acme", "a": "rw", "exp": exp, **binding})
    assert app.query("acme", "select 1", token=token).status_code == 200
    assert app.query("acme", "select 1", token=token).status_code == 200  # served from the cache
    for _ in range(60):  # bounded: until the wall clock is past `exp`
        if time.time() > exp + 0.05:
            break
        time.sleep(0.1)
    r = app.query("acme", "select 1", token=token)
    assert r.status_code == 401
    assert "expired" in r.json()["error"]["message"]


def test_tokens_from_another_data_dir_are_forgeries(app: InProcess, tmp_path: Path) -> None:
    app.create("acme")
    stranger = keys.signing_key(None, tmp_path / "elsewhere")
    token = jwt.encode({"sub": "acme", "a": "rw", "exp": int(time.time()) + 60}, stranger, algorithm="EdDSA")
    assert app.query("acme", "select 1", token=token).status_code == 401


@pytest.mark.parametrize(
    ("credential", "said"),
    [
        ("expired", "token expired"),
        ("forged_other_key", "its signature does not verify"),
        ("forged_tampered_payload", "its signature does not verify"),
        ("forged_alg_none", "not signed with EdDSA"),
        ("forged_hs256_public_key", "not signed with EdDSA"),
        ("wrong_admin_key", "not the admin key, nor a well-formed token"),
        ("malformed_garbage", "not the admin key, nor a well-formed token"),
    ],
)
def test_each_refused_credential_is_told_why_in_words_not_the_parsers(
    app: InProcess, credential: str, said: str
) -> None:
    """A wrong admin key is not told `Not enough segments`: PyJWT's words are its parsing's."""
    app.create("acme")
    app.create("other")
    r = app.client.get("/v1/admin/tenants/acme", headers=CREDENTIALS[credential](app))
    assert r.status_code == 401
    message = r.json()["error"]["message"]
    assert said in message, message
    for internal in ("segments", "padding", "Invalid", "header", "JSON"):
        assert internal not in message, message
