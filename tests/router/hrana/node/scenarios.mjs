// Drives a running sqlfleet with the official @libsql/client, one scenario per call.
//
//   node scenarios.mjs SCENARIO[,SCENARIO...] URL TOKEN [RO_TOKEN] [IDLE_SECONDS]
//
// Runs the scenarios in order, printing one JSON line {"scenario", "ok", ...observations} for
// each; exits 1 if any assertion failed. Each scenario creates its own tables (named after
// itself), so scenarios share a tenant but a tenant runs each scenario once.
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { createClient } from "@libsql/client";
import { rejects } from "./assertions.mjs";

const [scenarioList, url, token, roToken, idleSeconds] = process.argv.slice(2);

function client(authToken = token, intMode = "bigint") {
  return createClient({ url, authToken, intMode });
}

const scenarios = {
  async args() {
    const db = client();
    await db.execute("CREATE TABLE args_t (a INTEGER, b TEXT)");
    await db.execute({ sql: "INSERT INTO args_t VALUES (?, ?)", args: [1n, "one"] });
    await db.execute({ sql: "INSERT INTO args_t VALUES (:a, :b)", args: { a: 2n, b: "two" } });
    await db.execute({ sql: "INSERT INTO args_t VALUES (@a, $b)", args: { "@a": 3n, $b: "three" } });
    await db.execute("INSERT INTO args_t VALUES (?1, ?2)", [4n, "four"]);
    const rs = await db.execute({ sql: "SELECT a, b FROM args_t WHERE a >= ? ORDER BY a", args: [2n] });
    assert.deepEqual(rs.columns, ["a", "b"]);
    assert.deepEqual(rs.columnTypes, ["INTEGER", "TEXT"]);
    assert.deepEqual(rs.rows.map((r) => [r.a, r.b]), [[2n, "two"], [3n, "three"], [4n, "four"]]);
    const ins = await db.execute({ sql: "INSERT INTO args_t VALUES (?, ?)", args: [5n, "five"] });
    assert.equal(ins.rowsAffected, 1);
    assert.equal(ins.lastInsertRowid, 5n);
    const missing = await rejects(db.execute({ sql: "SELECT :a, :b", args: { a: 1n } }));
    db.close();
    return { missing_named_arg: missing.code };
  },

  async values() {
    const db = client();
    await db.execute("CREATE TABLE values_t (i INTEGER, f REAL, t TEXT, b BLOB, n, any_)");
    const big = 9223372036854775807n; // 2^63 - 1: far beyond 2^53
    const small = -9223372036854775808n;
    const beyond53 = 9007199254740993n; // 2^53 + 1, not representable as a double
    const blob = new Uint8Array([0, 1, 2, 127, 128, 254, 255]);
    await db.execute({
      sql: "INSERT INTO values_t VALUES (?, ?, ?, ?, ?, ?)",
      args: [big, 3.25, "héllo ✓ \u0000 end", blob, null, beyond53],
    });
    await db.execute({ sql: "INSERT INTO values_t (i, f, any_) VALUES (?, ?, ?)", args: [small, -0.5, 1.5] });
    const rs = await db.execute("SELECT i, f, t, b, n, any_, typeof(any_) AS ty FROM values_t ORDER BY rowid");
    const [r0, r1] = rs.rows;
    assert.equal(r0.i, big);
    assert.equal(typeof r0.f, "number");
    assert.equal(r0.f, 3.25);
    assert.equal(r0.t, "héllo ✓ \u0000 end");
    assert.ok(r0.b instanceof ArrayBuffer);
    assert.deepEqual(new Uint8Array(r0.b), blob);
    assert.equal(r0.n, null);
    assert.equal(r0.any_, beyond53);
    assert.equal(r0.ty, "integer");
    assert.equal(r1.i, small);
    assert.equal(r1.f, -0.5);
    assert.equal(r1.any_, 1.5);
    assert.equal(r1.ty, "real");
    const inf = await db.execute("SELECT 1e999 AS pos, -1e999 AS neg, 0.1 + 0.2 AS sum");
    assert.equal(inf.rows[0].pos, Infinity);
    assert.equal(inf.rows[0].neg, -Infinity);
    assert.equal(inf.rows[0].sum, 0.1 + 0.2);
    const asNumber = createClient({ url, authToken: token, intMode: "number" });
    const n = await asNumber.execute("SELECT 42 AS x");
    assert.equal(n.rows[0].x, 42);
    asNumber.close();
    db.close();
    return {};
  },

  async batch() {
    const db = client();
    await db.execute("CREATE TABLE batch_t (x INTEGER PRIMARY KEY, y TEXT NOT NULL)");
    const ok = await db.batch(
      [
        { sql: "INSERT INTO batch_t VALUES (?, ?)", args: [1n, "a"] },
        { sql: "INSERT INTO batch_t VALUES (?, ?)", args: [2n, "b"] },
        "SELECT count(*) AS c FROM batch_t",
      ],
      "write",
    );
    assert.equal(ok.length, 3);
    assert.equal(ok[2].rows[0].c, 2n);
    const failed = await rejects(
      db.batch(
        [
          { sql: "INSERT INTO batch_t VALUES (?, ?)", args: [3n, "c"] },
          { sql: "INSERT INTO batch_t VALUES (?, ?)", args: [1n, "duplicate key"] },
          { sql: "INSERT INTO batch_t VALUES (?, ?)", args: [4n, "d"] },
        ],
        "write",
      ),
    );
    const after = await db.execute("SELECT x FROM batch_t ORDER BY x");
    assert.deepEqual(after.rows.map((r) => r.x), [1n, 2n]); // row 3 rolled back with the batch
    const read = await db.batch(["SELECT count(*) AS c FROM batch_t", "SELECT max(x) AS m FROM batch_t"], "read");
    assert.equal(read[0].rows[0].c, 2n);
    assert.equal(read[1].rows[0].m, 2n);
    const readWrite = await rejects(db.batch(["INSERT INTO batch_t VALUES (9, 'no')"], "read"));
    const still = await db.execute("SELECT count(*) AS c FROM batch_t");
    assert.equal(still.rows[0].c, 2n);
    db.close();
    return { failed_code: failed.code, failed_index: failed.statementIndex, read_write_code: readWrite.code };
  },

  async transaction() {
    const db = client();
    const other = client();
    await db.execute("CREATE TABLE tx_t (x INTEGER)");
    const tx = await db.transaction("write");
    await tx.execute({ sql: "INSERT INTO tx_t VALUES (?)", args: [1n] });
    const inside = await tx.execute("SELECT count(*) AS c FROM tx_t");
    assert.equal(inside.rows[0].c, 1n);
    const batchInTx = await tx.batch([
      { sql: "INSERT INTO tx_t VALUES (?)", args: [2n] },
      "SELECT count(*) AS c FROM tx_t",
    ]);
    assert.equal(batchInTx[1].rows[0].c, 2n);
    await tx.commit();
    assert.equal((await other.execute("SELECT count(*) AS c FROM tx_t")).rows[0].c, 2n);

    const rb = await db.transaction("write");
    await rb.execute("INSERT INTO tx_t VALUES (3)");
    await rb.execute("DELETE FROM tx_t WHERE x = 1");
    await rb.rollback();
    const rows = (await other.execute("SELECT x FROM tx_t ORDER BY x")).rows.map((r) => r.x);
    assert.deepEqual(rows, [1n, 2n]);

    const ro = await db.transaction("read");
    assert.equal((await ro.execute("SELECT count(*) AS c FROM tx_t")).rows[0].c, 2n);
    const refused = await rejects(ro.execute("INSERT INTO tx_t VALUES (4)"));
    await ro.rollback();
    // after the read transaction the same tenant writes again
    await db.execute("INSERT INTO tx_t VALUES (5)");
    assert.equal((await other.execute("SELECT count(*) AS c FROM tx_t")).rows[0].c, 3n);
    db.close();
    other.close();
    return { read_tx_write_code: refused.code };
  },

  async multiple() {
    const db = client();
    await db.executeMultiple(`
      CREATE TABLE multi_t (x INTEGER, note TEXT);
      INSERT INTO multi_t VALUES (1, 'a;b');  -- a semicolon in a string
      /* a comment; with a semicolon */
      INSERT INTO multi_t VALUES (2, 'it''s');
      CREATE TRIGGER multi_trg AFTER INSERT ON multi_t BEGIN
        UPDATE multi_t SET note = note || '!' WHERE x = new.x;
      END;
      INSERT INTO multi_t VALUES (3, 'c');
    `);
    const rs = await db.execute("SELECT x, note FROM multi_t ORDER BY x");
    assert.deepEqual(rs.rows.map((r) => [r.x, r.note]), [[1n, "a;b"], [2n, "it's"], [3n, "c!"]]);
    const failed = await rejects(db.executeMultiple("INSERT INTO multi_t VALUES (4, 'd'); SELECT * FROM nowhere; INSERT INTO multi_t VALUES (5, 'e');"));
    const count = await db.execute("SELECT count(*) AS c FROM multi_t");
    assert.equal(count.rows[0].c, 4n); // the statement before the error ran (no transaction), not the one after
    db.close();
    return { failed_code: failed.code };
  },

  async readonly() {
    const rw = client();
    await rw.execute("CREATE TABLE ro_t (x INTEGER)");
    await rw.execute("INSERT INTO ro_t VALUES (1)");
    const ro = client(roToken);
    const rs = await ro.execute("SELECT count(*) AS c FROM ro_t");
    assert.equal(rs.rows[0].c, 1n);
    const refused = await rejects(ro.execute("INSERT INTO ro_t VALUES (2)"));
    const refusedBatch = await rejects(ro.batch(["INSERT INTO ro_t VALUES (3)"], "write"));
    const tx = await ro.transaction("deferred");
    const refusedTx = await rejects(tx.execute("DELETE FROM ro_t"));
    tx.close();
    assert.equal((await rw.execute("SELECT count(*) AS c FROM ro_t")).rows[0].c, 1n);
    ro.close();
    rw.close();
    return { code: refused.code, batch_code: refusedBatch.code, tx_code: refusedTx.code };
  },

  async expiry() {
    const db = client();
    await db.execute("CREATE TABLE exp_t (x INTEGER)");
    const tx = await db.transaction("write");
    await tx.execute("INSERT INTO exp_t VALUES (1)");
    await sleep((Number(idleSeconds) + 1.5) * 1000);
    const expired = await rejects(tx.execute("INSERT INTO exp_t VALUES (2)"));
    tx.close();
    // rolled back, and the tenant is writable again at once (the lock went with the stream)
    const started = Date.now();
    await db.execute("INSERT INTO exp_t VALUES (3)");
    const waitedMs = Date.now() - started;
    const rows = (await db.execute("SELECT x FROM exp_t")).rows.map((r) => r.x);
    assert.deepEqual(rows, [3n]);
    db.close();
    return { code: expired.code, message: expired.message, waited_ms: waitedMs };
  },
};

for (const name of scenarioList.split(",")) {
  try {
    if (!(name in scenarios)) throw new Error(`unknown scenario ${name}`);
    const observed = await scenarios[name]();
    console.log(JSON.stringify({ scenario: name, ok: true, ...observed }));
  } catch (e) {
    console.log(JSON.stringify({ scenario: name, ok: false, error: String(e?.stack ?? e), code: e?.code }));
    process.exitCode = 1;
  }
}
