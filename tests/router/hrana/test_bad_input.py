"""Bad Hrana bodies of every kind are a 4xx in the protocol's error shape, never a 5xx and never
a traceback (issue 10, finding 10): the quoted instance, then bodies generated from a grammar
close to the protocol (HRANA_3_SPEC.md, JSON encoding) with random subtrees swapped for junk,
sent to every Hrana endpoint."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.app import ADMIN, InProcess, in_process

BASE = "/v1/tenants/acme"
ENDPOINTS = ("v1/execute", "v1/batch", "v2/pipeline", "v3/pipeline", "v3/cursor")
FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def acme(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    # short waits: a generated BEGIN the cleanup below cannot close must not slow the rest down
    data = tmp_path_factory.mktemp("hrana-bad-input") / "data"
    with in_process(data, busy_timeout=0.2, stream_idle_timeout=1, preempt_wait=0.2) as app:
        app.create("acme")
        app.query("acme", "create table f(x)")
        yield app


def post(app: InProcess, endpoint: str, body: bytes) -> httpx2.Response:
    headers = {**ADMIN, "content-type": "application/json"}
    r = app.client.post(f"{BASE}/{endpoint}", content=body, headers=headers)
    assert r.status_code < 500, (endpoint, body[:300], r.status_code, r.text[:500])
    assert "Traceback" not in r.text and 'File "' not in r.text, r.text[:500]
    if r.status_code >= 400:
        error = r.json()
        assert isinstance(error["message"], str) and error["message"], r.text
        assert isinstance(error["code"], str) and error["code"], r.text
    _close_stream(app, endpoint, r)
    return r


def _close_stream(app: InProcess, endpoint: str, r: httpx2.Response) -> None:
    """End a stream a generated body left open (it may hold a transaction, and the tenant)."""
    if r.status_code != 200 or endpoint.startswith("v1/"):
        return
    first = r.json() if endpoint.endswith("pipeline") else json.loads(r.text.splitlines()[0])
    if first.get("baton"):
        body = {"baton": first["baton"], "requests": [{"type": "close"}]}
        app.client.post(f"{BASE}/v2/pipeline", json=body, headers=ADMIN)


# -- the instance from the finding ---------------------------------------------------------------

HUGE = int("9" * 401)  # a 401-digit JSON integer: float() of it overflows


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_float_written_as_a_huge_integer_is_a_400(acme: InProcess, endpoint: str) -> None:
    stmt = {"sql": "SELECT ?", "args": [{"type": "float", "value": HUGE}]}
    body = {
        "v1/execute": {"stmt": stmt},
        "v1/batch": {"batch": {"steps": [{"stmt": stmt}]}},
        "v2/pipeline": {"requests": [{"type": "execute", "stmt": stmt}]},
        "v3/pipeline": {"requests": [{"type": "execute", "stmt": stmt}]},
        "v3/cursor": {"batch": {"steps": [{"stmt": stmt}]}},
    }[endpoint]
    r = post(acme, endpoint, json.dumps(body).encode())
    text = r.text
    if r.status_code == 200:  # the pipeline answers per request, the cursor per step
        assert "PROTOCOL_ERROR" in text and "out of range" in text, text
    else:
        assert (r.status_code, r.json()["code"]) == (400, "PROTOCOL_ERROR"), text


# -- generated bodies ------------------------------------------------------------------------------

# JSON of any shape, with the numbers that break naive decoders (huge, negative zero, edges)
EDGES = st.sampled_from([HUGE, -HUGE, 2**63, -(2**63) - 1, 2**31, -(2**31) - 1, 10**309, 0, -0.0, 1e308])
NUMBERS = st.one_of(EDGES, EDGES, st.integers(), st.floats(allow_nan=False))
JUNK = st.recursive(
    st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=20)),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


def maybe_junk(proper: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`proper` mostly (9 in 10), now and then any JSON at all in its place."""
    return st.integers(min_value=0, max_value=9).flatmap(lambda n: JUNK if n == 0 else proper)


def obj(
    required: dict[str, st.SearchStrategy[Any]], optional: dict[str, st.SearchStrategy[Any]]
) -> st.SearchStrategy[dict[str, Any]]:
    """An object with the required fields and some of the optional ones, any of them junk now
    and then (a junk parent stands for the objects with fields missing)."""
    return st.fixed_dictionaries(
        {k: maybe_junk(v) for k, v in required.items()},
        optional={k: maybe_junk(v) for k, v in optional.items()},
    )


SQL = st.one_of(
    st.sampled_from(
        [
            "SELECT 1",
            "SELECT ?",
            "SELECT ?, ?",
            "SELECT :a, @b, $c",
            "SELECT ?1, ?2",
            "SELECT * FROM f",
            "INSERT INTO f VALUES (?)",
            "CREATE TABLE IF NOT EXISTS g(y)",
            "BEGIN",
            "BEGIN IMMEDIATE",
            "BEGIN TRANSACTION READONLY",
            "COMMIT",
            "ROLLBACK",
            "SELECT 1; SELECT 2",
            "",
            ";",
            "-- nothing",
            "PRAGMA table_info(f)",
            "SELECT zeroblob(10)",
            "SELECT 1e999, -1e999",
        ]
    ),
    st.text(max_size=30),
)
INT_STRING = st.integers(min_value=-(2**64), max_value=2**64).map(str)
VALUE = st.one_of(
    st.just({"type": "null"}),
    obj({"type": st.just("integer"), "value": st.one_of(INT_STRING, NUMBERS, st.text(max_size=25))}, {}),
    obj({"type": st.just("float"), "value": st.one_of(EDGES, NUMBERS)}, {}),
    obj({"type": st.just("text"), "value": st.text(max_size=20)}, {}),
    obj(
        {
            "type": st.just("blob"),
            "base64": st.one_of(st.sampled_from(["", "AAE", "AAE=", "/w=="]), st.text()),
        },
        {},
    ),
    obj({"type": st.text(max_size=8)}, {"value": JUNK}),
)
SQL_ID = st.one_of(st.integers(min_value=-3, max_value=3), NUMBERS)
STMT = obj(
    {"sql": SQL},
    {
        "sql_id": SQL_ID,
        "args": st.lists(VALUE, max_size=4),
        "named_args": st.lists(
            obj({"name": st.sampled_from([":a", "@b", "$c", "", "a"]), "value": VALUE}, {}), max_size=3
        ),
        "want_rows": st.booleans(),
    },
)
COND = st.recursive(
    st.one_of(
        obj({"type": st.sampled_from(["ok", "error"]), "step": st.integers(min_value=-1, max_value=4)}, {}),
        st.just({"type": "is_autocommit"}),
    ),
    lambda children: st.one_of(
        obj({"type": st.just("not"), "cond": children}, {}),
        obj({"type": st.sampled_from(["and", "or"]), "conds": st.lists(children, max_size=3)}, {}),
    ),
    max_leaves=6,
)
BATCH = obj({"steps": st.lists(obj({"stmt": STMT}, {"condition": COND}), max_size=5)}, {})
REQUEST = st.one_of(
    obj({"type": st.just("execute"), "stmt": STMT}, {}),
    obj({"type": st.just("batch"), "batch": BATCH}, {}),
    obj({"type": st.sampled_from(["sequence", "describe"])}, {"sql": SQL, "sql_id": SQL_ID}),
    obj({"type": st.just("store_sql"), "sql_id": SQL_ID, "sql": SQL}, {}),
    obj({"type": st.just("close_sql"), "sql_id": SQL_ID}, {}),
    st.sampled_from([{"type": "get_autocommit"}, {"type": "close"}, {"type": "nope"}, {}]),
)
BATON = st.one_of(st.none(), st.text(max_size=40), st.sampled_from(["AAAA", "=" * 8]))
BODIES = {
    "v1/execute": obj({"stmt": STMT}, {}),
    "v1/batch": obj({"batch": BATCH}, {}),
    "v2/pipeline": obj({"requests": st.lists(REQUEST, max_size=5)}, {"baton": BATON}),
    "v3/pipeline": obj({"requests": st.lists(REQUEST, max_size=5)}, {"baton": BATON}),
    "v3/cursor": obj({"batch": BATCH}, {"baton": BATON}),
}


def encode(body: Any) -> bytes:
    # json.dumps: Python's floats out of JSON's range as the literals the server refuses
    return json.dumps(body).encode()


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_generated_bodies_never_get_a_5xx(acme: InProcess, endpoint: str) -> None:
    @FUZZ
    @given(body=BODIES[endpoint])
    def check(body: Any) -> None:
        post(acme, endpoint, encode(body))

    check()


def _placed(endpoint: str, value: Any, named: bool) -> dict[str, Any]:
    """A well-formed body of `endpoint` with `value` as its one argument."""
    stmt: dict[str, Any] = (
        {"sql": "SELECT :a", "named_args": [{"name": ":a", "value": value}]}
        if named
        else {"sql": "SELECT ?", "args": [value]}
    )
    batch = {"steps": [{"stmt": {"sql": "SELECT 1"}}, {"stmt": stmt, "condition": {"type": "ok", "step": 0}}]}
    bodies: dict[str, dict[str, Any]] = {
        "v1/execute": {"stmt": stmt},
        "v1/batch": {"batch": batch},
        "v2/pipeline": {"requests": [{"type": "execute", "stmt": stmt}, {"type": "batch", "batch": batch}]},
        "v3/pipeline": {"requests": [{"type": "execute", "stmt": stmt}, {"type": "close"}]},
        "v3/cursor": {"batch": batch},
    }
    return bodies[endpoint]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_every_value_kind_with_edge_contents_in_every_argument_position(
    acme: InProcess, endpoint: str
) -> None:
    """The value decoders on their own: every Hrana value type holding an edge number, odd
    text or junk, as a positional and as a named argument, in each place a statement sits."""
    contents = st.one_of(EDGES, NUMBERS, INT_STRING, st.text(max_size=10), JUNK)
    value = st.builds(
        lambda kind, content, field: {"type": kind, field: content},
        st.sampled_from(["null", "integer", "float", "text", "blob", "Float", ""]),
        contents,
        st.sampled_from(["value", "base64"]),
    )

    @FUZZ
    @given(value=value, named=st.booleans())
    def check(value: dict[str, Any], named: bool) -> None:
        post(acme, endpoint, encode(_placed(endpoint, value, named)))

    check()


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_mutated_bytes_never_get_a_5xx(acme: InProcess, endpoint: str) -> None:
    """The bytes of a generated body, cut, spliced or with bytes swapped in."""

    @FUZZ
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        raw = bytearray(encode(data.draw(BODIES[endpoint], label="body")))
        for _ in range(data.draw(st.integers(min_value=1, max_value=4), label="mutations")):
            at = data.draw(st.integers(min_value=0, max_value=len(raw)), label="at")
            kind = data.draw(st.sampled_from(["cut", "insert", "replace"]), label="kind")
            piece = data.draw(st.binary(min_size=1, max_size=4), label="piece")
            if kind == "cut":
                del raw[at:]
            elif kind == "insert":
                raw[at:at] = piece
            else:
                raw[at : at + len(piece)] = piece
        post(acme, endpoint, bytes(raw))

    check()


def test_the_tenant_still_answers_after_the_fuzzing(acme: InProcess) -> None:
    assert acme.query("acme", "select 1").json()["rows"] == [[1]]
