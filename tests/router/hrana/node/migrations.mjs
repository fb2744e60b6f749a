// Drives a running sqlfleet with @libsql/client's migrate() and batch(), and drizzle-orm's
// libsql migrator, over http://.
//
//   node migrations.mjs SCENARIO URL TOKEN MAX_BATCH_STATEMENTS [MIGRATIONS_FOLDER]
//
// Prints one JSON line {"scenario", "ok", ...observations}; exits 1 if an assertion failed. An
// unhandled rejection (what crashed Node when the server refused the clients' pragmas) fails
// the run too.
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { createClient } from "@libsql/client";
import { drizzle } from "drizzle-orm/libsql";
import { migrate } from "drizzle-orm/libsql/migrator";

const [scenario, url, token, maxStatements, folder] = process.argv.slice(2);
const max = Number(maxStatements);
const unhandled = [];
process.on("unhandledRejection", (reason) => unhandled.push(String(reason?.stack ?? reason)));

const client = () => createClient({ url, authToken: token, intMode: "bigint" });
async function foreignKeys(db) {
  return (await db.execute("PRAGMA foreign_keys")).rows[0][0];
}

const scenarios = {
  // A table rebuild that only works with foreign keys off: drop and re-create a parent table
  // whose rows children reference (with them on, DROP TABLE fails the constraint).
  async migrate() {
    const db = client();
    await db.batch(
      [
        "CREATE TABLE m_parent (id INTEGER PRIMARY KEY, name TEXT)",
        "CREATE TABLE m_child (id INTEGER PRIMARY KEY, parent INTEGER REFERENCES m_parent(id))",
        "INSERT INTO m_parent VALUES (1, 'one')",
        "INSERT INTO m_child VALUES (1, 1)",
      ],
      "write",
    );
    const refused = await db.execute("DROP TABLE m_parent").then(
      () => assert.fail("expected the foreign key to refuse the drop"),
      (e) => e.code,
    );
    const results = await db.migrate([
      "CREATE TABLE m_parent_new (id INTEGER PRIMARY KEY, name TEXT NOT NULL DEFAULT '')",
      "INSERT INTO m_parent_new SELECT id, name FROM m_parent",
      "DROP TABLE m_parent",
      "ALTER TABLE m_parent_new RENAME TO m_parent",
    ]);
    assert.equal(results.length, 4);
    assert.equal(results[1].rowsAffected, 1);
    const joined = await db.execute("SELECT c.id, p.name FROM m_child c JOIN m_parent p ON p.id = c.parent");
    assert.deepEqual(joined.rows.map((r) => [r.id, r.name]), [[1n, "one"]]);
    // a failing migration rolls back, and foreign keys are on again afterwards either way
    const failed = await db.migrate(["CREATE TABLE m_rolled_back (x)", "SELECT * FROM nowhere"]).then(
      () => assert.fail("expected the migration to fail"),
      (e) => e.code,
    );
    const kept = await db.execute("SELECT count(*) FROM sqlite_schema WHERE name = 'm_rolled_back'");
    assert.equal(kept.rows[0][0], 0n);
    // a migration of exactly max statements is max + 5 steps (BEGIN/COMMIT/ROLLBACK + 2 pragmas)
    const many = Array.from({ length: max }, (_, i) => `CREATE TABLE IF NOT EXISTS m_many_${i % 3} (x)`);
    assert.equal((await db.migrate(many)).length, max);
    const fk = await foreignKeys(db);
    db.close();
    return { refused, failed, foreign_keys_after: Number(fk) };
  },

  async drizzle() {
    const db = client();
    const orm = drizzle(db);
    await migrate(orm, { migrationsFolder: folder });
    await migrate(orm, { migrationsFolder: folder }); // applied already: a no-op
    const tables = await db.execute(
      "SELECT name FROM sqlite_schema WHERE type = 'table' AND name LIKE 'd_%' ORDER BY name",
    );
    const users = await db.execute("SELECT u.email, count(p.id) AS posts FROM d_users u LEFT JOIN d_posts p ON p.author = u.id GROUP BY u.id");
    const applied = await db.execute("SELECT count(*) FROM __drizzle_migrations");
    const fk = await foreignKeys(db);
    db.close();
    return {
      tables: tables.rows.map((r) => r.name),
      users: users.rows.map((r) => [r.email, Number(r.posts)]),
      applied: Number(applied.rows[0][0]),
      foreign_keys_after: Number(fk),
    };
  },

  async batch() {
    const db = client();
    await db.execute("CREATE TABLE b_t (x)");
    const stmts = (n) => Array.from({ length: n }, (_, i) => ({ sql: "INSERT INTO b_t VALUES (?)", args: [BigInt(i)] }));
    const modes = {};
    for (const mode of ["write", "deferred", "read"]) {
      const n = mode === "read" ? max : max;
      const list = mode === "read" ? Array.from({ length: n }, () => "SELECT count(*) FROM b_t") : stmts(n);
      modes[mode] = (await db.batch(list, mode)).length;
    }
    const over = await db.batch(stmts(max + 1), "write").then(
      () => assert.fail("expected one statement over the limit to be refused"),
      (e) => ({ code: e.code, message: e.message }),
    );
    const count = await db.execute("SELECT count(*) FROM b_t");
    db.close();
    return { modes, over, rows: Number(count.rows[0][0]) };
  },
};

async function main() {
  const observed = await scenarios[scenario]();
  await sleep(100); // let a stray rejection surface before judging
  assert.deepEqual(unhandled, [], "unhandled rejections");
  return observed;
}

main().then(
  (observed) => console.log(JSON.stringify({ scenario, ok: true, ...observed })),
  (e) => {
    console.log(JSON.stringify({ scenario, ok: false, error: String(e?.stack ?? e), unhandled }));
    process.exit(1);
  },
);
