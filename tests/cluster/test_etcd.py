"""The adapter over aetcd: etcd's answers as our types and errors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import pytest

from cluster.errors import EtcdRequestError, EtcdUnavailable, LeaseNotFound, RevisionCompacted
from cluster.etcd import Etcd, grpc_target
from cluster.kv import Compare, Delete, Get, Put
from cluster.mirror import PrefixMirror
from tests.support.etcd import EtcdCluster


def test_grpc_target_lists_every_endpoint() -> None:
    assert grpc_target(["http://127.0.0.1:2379"]) == "127.0.0.1:2379"
    assert grpc_target(["http://127.0.0.1:1", "127.0.0.1:2", "localhost:3"]) == (
        "ipv4:127.0.0.1:1,127.0.0.1:2,127.0.0.1:3"
    )


def test_leases_transactions_listings_and_watches(etcd: EtcdCluster) -> None:
    async def go() -> None:
        client = await Etcd.connect(etcd.endpoints, call_timeout=1, retry_for=5)
        try:
            lease = await client.grant(5)
            assert lease.ttl == 5 and await client.keepalive(lease.id) == 5
            key = b"/t/owner/00007"
            won = await client.txn([Compare.absent(key)], [Put(key, b"a", lease.id)], [Get(key)])
            lost = await client.txn([Compare.absent(key)], [Put(key, b"b", lease.id)], [Get(key)])
            assert won.succeeded and not lost.succeeded
            assert lost.gets[0][0].value == b"a" and lost.gets[0][0].create_revision == won.revision
            listing = await client.get_prefix(b"/t/")
            assert [kv.key for kv in listing.kvs] == [key] and listing.revision == won.revision

            watch = client.watch_prefix(b"/t/", listing.revision + 1)
            writes = await client.txn([], [Put(b"/t/x", b"1"), Put(b"/t/y", b"2"), Delete(key)])
            batch = await anext(watch)  # one transaction, one batch
            assert [(e.key, e.kv is not None, e.revision) for e in batch] == [
                (b"/t/x", True, writes.revision),
                (b"/t/y", True, writes.revision),
                (key, False, writes.revision),
            ]
            await watch.aclose()

            await client.compact(writes.revision)
            with pytest.raises(RevisionCompacted):
                await anext(client.watch_prefix(b"/t/", listing.revision))

            await client.revoke(lease.id)
            await client.revoke(lease.id)  # idempotent
            assert await client.keepalive(lease.id) == 0
            with pytest.raises(LeaseNotFound):
                await client.put(b"/t/z", b"", lease=lease.id)
            with pytest.raises(EtcdRequestError):  # past etcd's 128 operations
                await client.txn([], [Put(b"/t/%d" % i, b"") for i in range(129)])
        finally:
            await client.close()

    asyncio.run(go())


def test_an_unreachable_etcd_is_reported_after_the_retries(etcd: EtcdCluster) -> None:
    async def go() -> None:
        client = await Etcd.connect(etcd.endpoints, call_timeout=0.2, retry_for=0.5)
        try:
            await client.put(b"/t/a", b"1")
            etcd.pause()
            started = time.monotonic()
            with pytest.raises(EtcdUnavailable):
                await client.get(b"/t/a")
            assert time.monotonic() - started < 2
        finally:
            etcd.resume()
            await client.close()

    asyncio.run(go())


def test_an_etcd_outage_is_logged_once_per_watch_and_its_errors_say_etcd_once(
    etcd: EtcdCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Session 5, finding 8: a stopped etcd made each watch log a line a second (9 mirrors: 9
    lines a second), and its errors read "etcd unreachable: etcd unreachable: ..." where logged."""

    async def go() -> None:
        client = await Etcd.connect(etcd.endpoints, call_timeout=0.2, retry_for=0.3)
        mirror = PrefixMirror(client, b"/t/")
        task = asyncio.create_task(mirror.run())
        try:
            await asyncio.wait_for(mirror.synced.wait(), 10)
            for outage in range(2):  # one line when it breaks, one when it works again: each time
                etcd.kill(0)
                with pytest.raises(EtcdUnavailable) as refused:
                    await client.get(b"/t/a")
                assert "unreachable" not in str(refused.value), refused.value  # the caller says that
                await asyncio.sleep(3.5)  # retried about every second meanwhile
                assert mirror.reconnects >= 3 * (outage + 1), mirror.reconnects
                etcd.restart(0)
                put = await asyncio.wait_for(_put_when_up(client), 30)
                await asyncio.wait_for(mirror.wait_revision(put), 30)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await client.close()

    with caplog.at_level(logging.INFO, logger="cluster.mirror"):
        asyncio.run(go())
    lines = [
        r.getMessage() for r in caplog.records if r.name == "cluster.mirror" and r.levelno == logging.INFO
    ]
    assert len(lines) == 4, lines
    assert all("broke" in line or "failed" in line for line in lines[0::2]), lines
    assert all(line == "watch of b'/t/' works again" for line in lines[1::2]), lines


async def _put_when_up(client: Etcd) -> int:
    """The revision of a put made once etcd answers again."""
    while True:
        with contextlib.suppress(EtcdUnavailable):
            return await client.put(b"/t/a", b"1")
        await asyncio.sleep(0.1)
