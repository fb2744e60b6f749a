"""Point reads on Hrana streams run on the event loop, as the REST API's do: over HTTP (a
pipeline of one read, maybe closing its stream) and over WebSocket, at once or, when the tenant
has jobs queued, when their turn comes; anything else stays a job of its tenant."""

from __future__ import annotations

import threading
from collections.abc import Generator
from functools import partial
from typing import Any

import anyio
import pytest

from router.hrana.executor import HRANA
from router.hrana.jobs import point_read, run_or_inline, try_inline
from router.hrana.protocol import Request, Response, Stmt
from router.scheduler import Scheduler
from tests.support.app import ADMIN, InProcess

READ = "SELECT v FROM t WHERE id = ?"


def _pipeline(app: InProcess, *requests: dict[str, Any], baton: str | None = None) -> dict[str, Any]:
    r = app.client.post(
        "/v1/tenants/acme/v2/pipeline", json={"baton": baton, "requests": list(requests)}, headers=ADMIN
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _read(key: int) -> dict[str, Any]:
    return {"type": "execute", "stmt": {"sql": READ, "args": [{"type": "integer", "value": str(key)}]}}


def _value(result: dict[str, Any]) -> Any:
    assert result["type"] == "ok", result
    return result["response"]["result"]["rows"][0][0]["value"]


@pytest.fixture
def jobs(app: InProcess, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tenants of the jobs the scheduler runs from now on (a spy: they still run)."""
    app.create("acme")
    for sql in ("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)", "INSERT INTO t VALUES (1, 'a'), (2, 'b')"):
        assert app.query("acme", sql).status_code == 200
    seen: list[str] = []
    scheduler = app.server.context.scheduler
    drive = scheduler._drive

    async def spy(tenant: str, steps: Generator[None, None, Any]) -> Any:
        seen.append(tenant)
        return await drive(tenant, steps)

    monkeypatch.setattr(scheduler, "_drive", spy)
    return seen


def test_a_judged_point_read_in_a_pipeline_runs_on_the_loop(app: InProcess, jobs: list[str]) -> None:
    close = {"type": "close"}
    for _ in range(2):  # the second run, in a job, judges it (tenants.inline)
        assert _value(_pipeline(app, _read(1), close)["results"][0]) == "a"
    assert len(jobs) == 2
    body = _pipeline(app, _read(2), close)
    assert _value(body["results"][0]) == "b"
    assert body["results"][1] == {"type": "ok", "response": {"type": "close"}}
    assert body["baton"] is None and len(jobs) == 2  # no job: answered on the loop, stream closed
    # without `close` the stream stays open, and its next read runs inline too
    body = _pipeline(app, _read(1))
    assert _value(body["results"][0]) == "a" and body["baton"] is not None
    body = _pipeline(app, _read(2), close, baton=body["baton"])
    assert _value(body["results"][0]) == "b" and body["baton"] is None
    assert len(jobs) == 2
    assert len(app.server.context.streams) == 0


def test_other_pipelines_stay_jobs(app: InProcess, jobs: list[str]) -> None:
    for _ in range(2):
        _pipeline(app, _read(1), {"type": "close"})
    before = len(jobs)
    _pipeline(app, _read(1), _read(2), {"type": "close"})  # two reads: one job for all of them
    write = {"type": "execute", "stmt": {"sql": "UPDATE t SET v = 'c' WHERE id = 2"}}
    _pipeline(app, write, {"type": "close"})
    body = _pipeline(app, _read(2), {"type": "close"})
    assert _value(body["results"][0]) == "c"
    assert len(jobs) == before + 2


def test_a_read_queued_behind_a_job_runs_on_the_loop_when_its_turn_comes(
    app: InProcess, jobs: list[str]
) -> None:
    # The WebSocket bench: once one request of a busy tenant was a job, every read arriving
    # meanwhile became a job too (a worker thread each), though it could have run inline.
    c = app.server.context
    for _ in range(2):
        _pipeline(app, _read(1), {"type": "close"})
    jobs.clear()
    request = Request("execute", Stmt(READ, None, [2], {}))
    release = threading.Event()
    ran_as_job: list[str] = []

    def work(executor: object) -> Generator[None, None, str]:
        ran_as_job.append(threading.current_thread().name)
        return "job"
        yield

    async def scenario() -> tuple[object, str]:
        scheduler = Scheduler(threads=2, max_queued=10, heavy_seconds=10, window=30, grace=0.0)
        monkey = pytest.MonkeyPatch()
        monkey.setattr(c, "scheduler", scheduler)  # this event loop's own
        try:
            outcome: list[object] = []
            stream = c.streams.open("acme")
            budget = c.budget(HRANA)

            async def read() -> None:
                inline = lambda: try_inline(c, stream, request, budget)  # noqa: E731
                reads = partial(point_read, stream, [request])
                outcome.append(
                    await run_or_inline(c, stream, False, work, budget, inline, waits_as_read=reads)
                )

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(scheduler.call, "acme", release.wait, 5)
                await anyio.sleep(0.05)
                assert c.queued("acme")
                tasks.start_soon(read)
                await anyio.sleep(0.05)
                assert outcome == []  # waits its turn behind the job
                release.set()
            budget.release()
            return outcome[0], threading.current_thread().name
        finally:
            monkey.undo()
            scheduler.close()

    response, _ = anyio.run(scenario)
    assert isinstance(response, Response) and response.result is not None
    assert response.result.result is not None and response.result.result.rows == [("b",)]
    assert ran_as_job == []
    assert len(c.streams) == 1  # given back, open (no close was asked)
