"""Tokens are bound to the tenant they were minted for (its incarnation) and can be revoked
per tenant without changing the server's key (issue 10, finding 9)."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from ops import keys
from tests.support.app import ADMIN, InProcess, bearer
from tests.support.http_contract import assert_error_shape, checking


@pytest.fixture
def app(app: InProcess) -> InProcess:
    checking(app.client)
    return app


def _uses(app: InProcess, tenant: str, token: str) -> list[tuple[int, str]]:
    """(status, error code or '') of a read and a write through REST query, REST batch and Hrana."""
    answers = []
    for body in ({"sql": "select count(*) from t"}, {"sql": "insert into t values (1)"}):
        for r in (
            app.client.post(f"/v1/tenants/{tenant}/query", json=body, headers=bearer(token)),
            app.client.post(
                f"/v1/tenants/{tenant}/batch", json={"statements": [body]}, headers=bearer(token)
            ),
        ):
            answers.append((r.status_code, r.json()["error"]["code"] if r.status_code >= 400 else ""))
        hrana = {"requests": [{"type": "execute", "stmt": body}, {"type": "close"}]}
        r = app.client.post(f"/v1/tenants/{tenant}/v2/pipeline", json=hrana, headers=bearer(token))
        answers.append((r.status_code, r.json()["code"] if r.status_code >= 400 else ""))
    return answers


OK = [(200, "")] * 6
REFUSED = [(401, "unauthorized"), (401, "unauthorized"), (401, "UNAUTHORIZED")] * 2


def test_a_token_does_not_outlive_its_tenant(app: InProcess) -> None:
    app.create("acme")
    app.query("acme", "create table t(x)")
    old = app.token("acme")
    assert _uses(app, "acme", old) == OK  # and now it is in the verified-token cache
    assert app.client.delete("/v1/admin/tenants/acme", headers=ADMIN).status_code == 204
    app.create("acme")
    app.query("acme", "create table t(x)")
    assert _uses(app, "acme", old) == REFUSED
    r = app.query("acme", "select 1", token=old)
    assert "earlier tenant 'acme'" in r.json()["error"]["message"]
    assert app.query("acme", "select count(*) from t").json()["rows"] == [[0]]
    assert _uses(app, "acme", app.token("acme")) == OK  # a token of the new tenant works


def test_a_restore_as_a_new_tenant_is_a_new_incarnation(app: InProcess) -> None:
    app.create("acme")
    app.query("acme", "create table t(x)")
    app.create("fork")
    fork_token = app.token("fork")
    assert app.client.delete("/v1/admin/tenants/fork", headers=ADMIN).status_code == 204
    r = app.client.post(
        "/v1/admin/tenants/acme/restore", json={"timestamp": "latest", "as": "fork"}, headers=ADMIN
    )
    assert r.status_code == 200, r.text
    assert _uses(app, "fork", fork_token) == REFUSED


def test_a_restore_in_place_keeps_the_tenants_tokens(app: InProcess) -> None:
    app.create("acme")
    app.query("acme", "create table t(x)")
    token = app.token("acme")
    r = app.client.post("/v1/admin/tenants/acme/restore", json={"timestamp": "latest"}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert _uses(app, "acme", token) == OK


def test_revoke_refuses_the_tenants_tokens_minted_before_and_only_those(app: InProcess) -> None:
    for tenant in ("acme", "beta"):
        app.create(tenant)
        app.query(tenant, "create table t(x)")
    rw, ro, beta = app.token("acme"), app.token("acme", "ro"), app.token("beta")
    baton = app.client.post("/v1/tenants/acme/v2/pipeline", json={"requests": []}, headers=bearer(rw)).json()[
        "baton"
    ]
    r = app.client.post("/v1/admin/tenants/acme/tokens/revoke", headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["tenant"] == "acme"
    assert _uses(app, "acme", rw) == REFUSED
    assert app.query("acme", "select 1", token=ro).status_code == 401
    assert "revoked" in app.query("acme", "select 1", token=ro).json()["error"]["message"]
    # a stream opened before cannot be carried on with the revoked token either
    r = app.client.post(
        "/v1/tenants/acme/v2/pipeline", json={"baton": baton, "requests": []}, headers=bearer(rw)
    )
    assert r.status_code == 401
    assert _uses(app, "beta", beta) == OK  # another tenant's tokens are untouched
    assert _uses(app, "acme", app.token("acme")) == OK  # minted after: works
    assert app.query("acme", "select 1").status_code == 200  # the admin key is not a token


def test_revoke_of_a_missing_or_invalid_tenant(app: InProcess) -> None:
    r = app.client.post("/v1/admin/tenants/nobody/tokens/revoke", headers=ADMIN)
    assert (r.status_code, r.json()["error"]["code"]) == (404, "tenant_not_found")
    r = app.client.post("/v1/admin/tenants/NOPE/tokens/revoke", headers=ADMIN)
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_tenant_id")
    app.create("acme")
    r = app.client.post("/v1/admin/tenants/acme/tokens/revoke", headers=bearer(app.token("acme")))
    assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")


def _signed(app: InProcess, claims: dict[str, Any]) -> str:
    key = keys.signing_key(None, app.server.settings.data_dir)
    return jwt.encode(claims, key, algorithm="EdDSA")


def test_tokens_minted_before_the_binding_are_refused(app: InProcess) -> None:
    """A token without the incarnation claim (as minted before the upgrade) is genuine but
    cannot say which tenant of its id it was for: refused, with a message saying what to do."""
    app.create("acme")
    exp = int(time.time()) + 600
    r = app.query("acme", "select 1", token=_signed(app, {"sub": "acme", "a": "rw", "exp": exp}))
    assert r.status_code == 401
    assert_error_shape(r)
    assert "mint a new one" in r.json()["error"]["message"]
    row = app.server.fleet.catalog.get("acme")
    assert row is not None
    for bad in (
        {"inc": 5, "gen": 0},
        {"inc": row.incarnation, "gen": "0"},
        {"inc": row.incarnation, "gen": 1},
    ):
        token = _signed(app, {"sub": "acme", "a": "rw", "exp": exp, **bad})
        assert app.query("acme", "select 1", token=token).status_code == 401, bad
    good = _signed(app, {"sub": "acme", "a": "rw", "exp": exp, "inc": row.incarnation, "gen": 0})
    assert app.query("acme", "select 1", token=good).status_code == 200
