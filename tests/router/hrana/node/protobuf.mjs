// Drives a running sqlfleet with @libsql/hrana-client at protocol version 3 over HTTP: it probes
// `GET v3-protobuf`, then speaks protobuf to `v3-protobuf/pipeline` and `v3-protobuf/cursor`.
//
//   node protobuf.mjs URL TOKEN
//
// Prints one JSON line of observations (and "ok": true) or exits 1 with the failed assertion.
// Every request the client makes goes through a recording fetch, so the test can see which
// endpoints and content types were used.
import assert from "node:assert/strict";
import * as hrana from "@libsql/hrana-client";
import { rejects } from "./assertions.mjs";

const [url, token] = process.argv.slice(2);
const requests = [];

async function recordingFetch(request) {
  const response = await fetch(request);
  requests.push({
    method: request.method,
    path: new URL(request.url).pathname,
    request_type: request.headers.get("content-type"),
    status: response.status,
    response_type: response.headers.get("content-type"),
  });
  return response;
}

async function main() {
  const client = hrana.openHttp(url, token, recordingFetch, undefined, 3);
  client.intMode = "bigint";
  assert.equal(await client.getVersion(), 3);
  const stream = client.openStream();

  // execute: every value type, both ways
  await stream.run("CREATE TABLE pb_t (i INTEGER, f REAL, t TEXT, b BLOB, n)");
  const blob = new Uint8Array([0, 1, 2, 127, 128, 254, 255]);
  const big = 9223372036854775807n;
  const ins = await stream.run(["INSERT INTO pb_t VALUES (?, ?, ?, ?, ?)", [big, 2.5, "héllo ✓", blob, null]]);
  assert.equal(ins.affectedRowCount, 1);
  assert.equal(ins.lastInsertRowid, 1n);
  await stream.run(["INSERT INTO pb_t (i, t) VALUES (:i, :t)", { i: -5n, t: "named" }]);
  const rows = await stream.query("SELECT i, f, t, b, n FROM pb_t ORDER BY rowid");
  assert.deepEqual(rows.columnNames, ["i", "f", "t", "b", "n"]);
  // protobuf: an absent decltype is `undefined` to the client (JSON says null)
  assert.deepEqual(rows.columnDecltypes, ["INTEGER", "REAL", "TEXT", "BLOB", undefined]);
  const [r0, r1] = rows.rows;
  assert.equal(r0.i, big);
  assert.equal(r0.f, 2.5);
  assert.equal(r0.t, "héllo ✓");
  assert.deepEqual(new Uint8Array(r0.b), blob);
  assert.equal(r0.n, null);
  assert.equal(r1.i, -5n);
  assert.equal(r1.t, "named");

  // a statement error keeps the stream usable
  const failure = await stream.run("SELECT * FROM nowhere").then(
    () => assert.fail("expected an error"),
    (e) => e,
  );
  assert.ok(failure instanceof hrana.ResponseError, String(failure));
  const error_code = failure.code;

  // a batch over the cursor endpoint, with conditions and a failing step
  const batch = stream.batch(true);
  const one = batch.step().queryValue("SELECT 1");
  const many = batch.step().query("SELECT i FROM pb_t ORDER BY rowid");
  const failingStep = batch.step();
  // handled at once: the step's promise rejects while the batch runs, before it is awaited
  const failing = rejects(failingStep.run("INSERT INTO nowhere VALUES (1)"));
  const skipped = batch.step().condition(hrana.BatchCond.ok(failingStep)).queryValue("SELECT 'skipped'");
  const ranAfter = batch
    .step()
    .condition(hrana.BatchCond.not(hrana.BatchCond.ok(failingStep)))
    .queryValue("SELECT 'ran'");
  const autocommitStep = batch.step().condition(hrana.BatchCond.isAutocommit(batch)).queryValue("SELECT 'auto'");
  await batch.execute();
  assert.equal((await one).value, 1n);
  assert.deepEqual((await many).rows.map((r) => r.i), [big, -5n]);
  assert.ok((await failing) instanceof hrana.ResponseError);
  assert.equal(await skipped, undefined);
  assert.equal((await ranAfter).value, "ran");
  assert.equal((await autocommitStep).value, "auto");

  // an interactive transaction across requests, stored SQL, describe, sequence
  await stream.run("BEGIN");
  assert.equal(await stream.getAutocommit(), false);
  await stream.run("INSERT INTO pb_t (i) VALUES (3)");
  const count = stream.storeSql("SELECT count(*) FROM pb_t");
  assert.equal((await stream.queryValue(count)).value, 3n);
  await stream.run("ROLLBACK");
  assert.equal(await stream.getAutocommit(), true);
  assert.equal((await stream.queryValue(count)).value, 2n);
  count.close();
  const described = await stream.describe("SELECT i AS x FROM pb_t WHERE i = :a");
  assert.deepEqual(described.paramNames, [":a"]);
  assert.deepEqual(described.columns.map((c) => c.name), ["x"]);
  assert.equal(described.isReadonly, true);
  await stream.sequence("CREATE TABLE pb_seq (x); INSERT INTO pb_seq VALUES (1); INSERT INTO pb_seq VALUES (2)");
  assert.equal((await stream.queryValue("SELECT sum(x) FROM pb_seq")).value, 3n);
  stream.closeGracefully();
  client.close();

  // the client does not wait for the last response of a closed stream: let it land
  await new Promise((resolve) => setTimeout(resolve, 200));
  return { ok: true, error_code, requests };
}

main().then(
  (observed) => console.log(JSON.stringify(observed)),
  (e) => {
    console.log(JSON.stringify({ ok: false, error: String(e?.stack ?? e), requests }));
    process.exit(1);
  },
);
