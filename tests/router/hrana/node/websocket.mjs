// Drives a running sqlfleet over WebSocket with what @libsql/client 0.18 does not exercise on its
// own: @libsql/hrana-client at protocol version 3 (cursors, get_autocommit, describe, stored SQL,
// is_autocommit conditions) in the encoding the subprotocol names, and @libsql/client (hrana2)
// with more distinct statements than its SQL cache holds, many requests at once, and the
// "deferred" batch and transaction modes.
//
//   node websocket.mjs SCENARIO URL TOKEN
//
// SCENARIO: hrana3 | hrana3-protobuf | client. Prints one JSON line of observations (and "ok":
// true), or exits 1 with the failed assertion.
import assert from "node:assert/strict";
import { createClient } from "@libsql/client";
import * as hrana from "@libsql/hrana-client";
import { rejects } from "./assertions.mjs";

const [scenario, url, token] = process.argv.slice(2);

async function v3(subprotocol) {
  // the client's own subprotocol choice, narrowed to one: it reads the encoding off the answer
  const client = new hrana.WsClient(new hrana.WebSocket(url, [subprotocol]), token);
  client.intMode = "bigint";
  assert.equal(await client.getVersion(), 3);
  const table = subprotocol.replace("-", "_");
  const stream = client.openStream();

  await stream.sequence(`CREATE TABLE ${table} (i INTEGER, t TEXT, b BLOB); INSERT INTO ${table} VALUES (1, 'one', x'00ff')`);
  const big = 9223372036854775807n;
  const blob = new Uint8Array([0, 1, 254, 255]);
  const ins = await stream.run([`INSERT INTO ${table} VALUES (?, ?, ?)`, [big, "héllo ✓", blob]]);
  assert.equal(ins.affectedRowCount, 1);
  assert.equal(ins.lastInsertRowid, 2n);
  const rows = await stream.query(`SELECT i, t, b FROM ${table} ORDER BY rowid`);
  assert.deepEqual(rows.columnNames, ["i", "t", "b"]);
  assert.equal(rows.rows[1].i, big);
  assert.equal(rows.rows[1].t, "héllo ✓");
  assert.deepEqual(new Uint8Array(rows.rows[1].b), blob);

  // stored SQL, used by id
  const sql = client.storeSql(`SELECT count(*) FROM ${table} WHERE i > ?`);
  assert.equal((await stream.queryValue([sql, [0n]])).value, 2n);
  sql.close();

  // describe
  const described = await stream.describe(`SELECT i, :name, @other FROM ${table}`);
  assert.deepEqual(described.paramNames, [":name", "@other"]);
  assert.equal(described.isReadonly, true);
  assert.equal(described.columns[0].name, "i");

  // get_autocommit, and an is_autocommit condition
  assert.equal(await stream.getAutocommit(), true);
  await stream.run("BEGIN");
  assert.equal(await stream.getAutocommit(), false);
  const batch = stream.batch(false);
  const inTx = batch.step().condition(hrana.BatchCond.not(hrana.BatchCond.isAutocommit(batch))).queryValue("SELECT 'in a transaction'");
  const outside = batch.step().condition(hrana.BatchCond.isAutocommit(batch)).queryValue("SELECT 'never'");
  await batch.execute();
  assert.equal((await inTx).value, "in a transaction");
  assert.equal(await outside, undefined);
  await stream.run("ROLLBACK");

  // a cursor over more entries than one fetch carries, with a failing step in between
  const cursorBatch = stream.batch(true);
  const many = cursorBatch
    .step()
    .query("WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 2500) SELECT x FROM n");
  // handled at once: the step's promise rejects while the batch runs, before it is awaited
  const broken = rejects(cursorBatch.step().query("SELECT * FROM nowhere"));
  const after = cursorBatch.step().queryValue(`SELECT count(*) FROM ${table}`);
  await cursorBatch.execute();
  const manyRows = (await many).rows;
  assert.equal(manyRows.length, 2500);
  assert.equal(manyRows[2499].x, 2500n);
  const brokenError = await broken;
  assert.equal((await after).value, 2n);

  // a statement error keeps the stream usable
  const failed = await rejects(stream.run("SELECT * FROM nowhere"));
  assert.equal((await stream.queryValue("SELECT 7")).value, 7n);
  stream.close();
  client.close();
  return { step_error_code: brokenError.code, error_code: failed.code };
}

async function withClient() {
  const db = createClient({ url, authToken: token, intMode: "bigint" });
  await db.execute("CREATE TABLE client_t (x INTEGER)");
  // more distinct statements than the client caches (100): it evicts with close_sql and stores
  // again, pipelined behind the requests that use the texts
  for (let round = 0; round < 2; round++) {
    for (let i = 0; i < 150; i++) {
      const rs = await db.execute({ sql: `SELECT ${i} AS v, ? AS r`, args: [BigInt(round)] });
      assert.equal(rs.rows[0].v, BigInt(i));
    }
  }
  // many requests at once on one socket (the client's default concurrency is 20)
  const all = await Promise.all(
    Array.from({ length: 60 }, (_, i) => db.execute({ sql: "INSERT INTO client_t VALUES (?)", args: [BigInt(i)] })),
  );
  assert.equal(all.length, 60);
  assert.equal((await db.execute("SELECT count(*) AS c FROM client_t")).rows[0].c, 60n);
  // "deferred" batches and transactions
  const deferred = await db.batch(["INSERT INTO client_t VALUES (100)", "SELECT count(*) AS c FROM client_t"], "deferred");
  assert.equal(deferred[1].rows[0].c, 61n);
  const tx = await db.transaction("deferred");
  await tx.execute("INSERT INTO client_t VALUES (101)");
  await tx.commit();
  const rb = await db.transaction("write");
  await rb.execute("DELETE FROM client_t");
  await rb.rollback();
  assert.equal((await db.execute("SELECT count(*) AS c FROM client_t")).rows[0].c, 62n);
  // errors
  const constraint = await rejects(db.execute("INSERT INTO nowhere VALUES (1)"));
  db.close();
  return { error_code: constraint.code };
}

try {
  const observed = scenario === "client" ? await withClient() : await v3(scenario);
  console.log(JSON.stringify({ scenario, ok: true, ...observed }));
} catch (e) {
  console.log(JSON.stringify({ scenario, ok: false, error: String(e?.stack ?? e), code: e?.code }));
  process.exitCode = 1;
}
