import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import net from "node:net";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import pg from "pg";
import { type AgentStoreClient, Code, createClient, type RunEvent, RunStatus } from "../src/client/index.ts";
import { collect, eventually, range, rejectsWith } from "./helpers/assertions.ts";
import { ADMIN_URL, backends, pglite, postgres, type TestDatabase } from "./helpers/databases.ts";
import { API_KEYS_ENV, KEYS, ROOT, type ServerProcess, spawnServer } from "./helpers/servers.ts";

/** These tests run the server as the README does (`node src/main.ts`), in separate processes. */

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

const appendOne = (client: AgentStoreClient, runId: string, i: number) =>
  client.runs.appendRunEvents({ runId, events: [{ type: "command_output", payload: { i } }] });

for (const backend of await backends()) {
  describe(`server process on ${backend.name}`, { skip: backend.skip }, () => {
    const cleanup: Array<() => Promise<unknown>> = [];
    after(async () => {
      for (const step of cleanup.reverse()) await step().catch(() => {});
    });

    it("followRunEvents resumes across a kill -9 and a restart, and nothing acknowledged is lost", async () => {
      const db: TestDatabase = await backend.create();
      cleanup.push(() => db.drop());
      const port = await freePort();
      let server: ServerProcess = await spawnServer(db.env, port);
      cleanup.push(() => server.stop("SIGKILL"));
      const client = createClient({ baseUrl: server.url, pingIntervalMs: 1_000 });
      cleanup.push(async () => client.close());

      const { run } = await client.runs.createRun({ run: {} });
      const runId = run?.runId ?? "";
      const seen: RunEvent[] = [];
      let reconnects = 0;
      const following = (async () => {
        for await (const event of client.followRunEvents(runId, {
          maxDelayMs: 200,
          onReconnect: () => {
            reconnects++;
          },
        })) {
          seen.push(event);
        }
      })();
      for (const i of range(1, 5)) await appendOne(client, runId, i);
      await eventually(() => assert.equal(seen.length, 5));

      assert.equal(await server.stop("SIGKILL"), "SIGKILL");
      server = await spawnServer(db.env, port);
      const { events: survived } = await client.runs.listRunEvents({ runId });
      assert.deepEqual(
        survived.map((e) => Number(e.seq)),
        range(1, 5),
        "acknowledged appends survive the crash",
      );
      for (const i of range(6, 10)) await appendOne(client, runId, i);
      await client.runs.finishRun({ runId, status: RunStatus.COMPLETED });
      await following;

      assert.deepEqual(
        seen.map((e) => Number(e.seq)),
        range(1, 11),
        "every event once, in order",
      );
      assert.deepEqual(
        seen.slice(0, 10).map((e) => e.payload?.i),
        range(1, 10),
      );
      assert.ok(reconnects >= 1, "the follower had to reconnect");
    });

    it("SIGTERM ends open streams with UNAVAILABLE, reports NOT_SERVING and exits cleanly", async () => {
      const db = await backend.create();
      cleanup.push(() => db.drop());
      const server = await spawnServer({ ...db.env, AGENTSTORE_API_KEYS: API_KEYS_ENV });
      const client = createClient({ baseUrl: server.url, apiKey: KEYS.alpha });
      cleanup.push(async () => client.close());
      const { run } = await client.runs.createRun({ run: {} });
      await appendOne(client, run?.runId ?? "", 1);
      const stream = client.runs.streamRunEvents({ runId: run?.runId ?? "" })[Symbol.asyncIterator]();
      assert.equal((await stream.next()).value?.event?.seq, 1n);
      const pending = stream.next();
      const exit = server.stop("SIGTERM");
      await rejectsWith(pending, Code.Unavailable);
      assert.equal(await exit, 0);
      assert.match(server.output(), /"msg":"agentstore stopped"/);
      assert.ok(!server.output().includes(KEYS.alpha), "the API key never reaches the logs");
    });
  });
}

const pgBackend = await postgres();
describe("replicas on one PostgreSQL", { skip: pgBackend.skip }, () => {
  const cleanup: Array<() => Promise<unknown>> = [];
  after(async () => {
    for (const step of cleanup.reverse()) await step().catch(() => {});
  });

  it("events appended through one replica stream live from another, and a stream resumes on either", async () => {
    const db = await pgBackend.create();
    cleanup.push(() => db.drop());
    // Started together on a fresh database: both migrate at start, and must not trip over each other.
    const starting = [spawnServer(db.env), spawnServer(db.env)];
    for (const s of starting) cleanup.push(() => s.then((server) => server.stop()));
    const [a, b] = await Promise.all(starting);
    assert.ok(a && b);
    const viaA = createClient({ baseUrl: a.url });
    const viaB = createClient({ baseUrl: b.url });
    cleanup.push(
      async () => viaA.close(),
      async () => viaB.close(),
    );

    const { run } = await viaA.runs.createRun({ run: {} });
    const runId = run?.runId ?? "";
    const fromB: RunEvent[] = [];
    const controller = new AbortController();
    const streamingFromB = (async () => {
      for await (const res of viaB.runs.streamRunEvents({ runId }, { signal: controller.signal })) {
        if (res.event) fromB.push(res.event);
      }
    })().catch(() => {});
    for (const i of range(1, 4)) {
      await appendOne(viaA, runId, i);
      await eventually(() => assert.equal(fromB.length, i), 5_000);
    }
    controller.abort();
    await streamingFromB;

    // Resume on replica A from the last seq B delivered, while B keeps taking writes.
    const last = fromB.at(-1)?.seq ?? 0n;
    const resumed = collect(viaA.followRunEvents(runId, { afterSeq: last }));
    for (const i of range(5, 7)) await appendOne(viaB, runId, i);
    await viaB.runs.finishRun({ runId, status: RunStatus.COMPLETED });
    const rest = await resumed;
    assert.deepEqual(
      [...fromB, ...rest].map((e) => Number(e.seq)),
      range(1, 8),
    );
  });

  it("the migrate command applies migrations once; with AGENTSTORE_MIGRATE=false the schema is untouched", async () => {
    const db = await pgBackend.create();
    cleanup.push(() => db.drop());
    const env = { PATH: process.env.PATH ?? "", ...db.env };
    const first = spawnSync(process.execPath, ["src/main.ts", "migrate"], {
      cwd: ROOT,
      env,
      encoding: "utf8",
    });
    assert.equal(first.status, 0, first.stderr + first.stdout);
    assert.match(first.stdout, /applied migrations/);
    const second = spawnSync(process.execPath, ["src/main.ts", "migrate"], {
      cwd: ROOT,
      env,
      encoding: "utf8",
    });
    assert.equal(second.status, 0);
    assert.match(second.stdout, /database is up to date/);

    const empty = await pgBackend.create();
    cleanup.push(() => empty.drop());
    const refused = spawnSync(process.execPath, ["src/main.ts"], {
      cwd: ROOT,
      env: {
        PATH: process.env.PATH ?? "",
        ...empty.env,
        AGENTSTORE_MIGRATE: "false",
        AGENTSTORE_LISTEN: "127.0.0.1:0",
      },
      encoding: "utf8",
      timeout: 30_000,
    });
    assert.equal(refused.status, 1);
    assert.match(refused.stdout, /schema is behind this server/);
    const client = new pg.Client({ connectionString: empty.url });
    await client.connect();
    try {
      const { rows } = await client.query("select to_regclass('public.runs') as runs");
      assert.equal(rows[0].runs, null, "no table was created");
    } finally {
      await client.end();
    }
  });
});

/** Runs `node src/main.ts` to its exit (the server is expected to refuse to start). */
const runMain = (env: Record<string, string>, args: string[] = []) =>
  spawnSync(process.execPath, ["src/main.ts", ...args], {
    cwd: ROOT,
    env: {
      PATH: process.env.PATH ?? "",
      AGENTSTORE_DATA_DIR: "memory://",
      AGENTSTORE_LISTEN: "127.0.0.1:0",
      ...env,
    },
    encoding: "utf8",
    timeout: 60_000,
  });

/** An operator's mistake is told in one line on stderr: no stack trace. */
function assertOneLine(stderr: string, pattern: RegExp) {
  const lines = stderr.trim().split("\n");
  assert.equal(lines.length, 1, `one line, got:\n${stderr}`);
  assert.match(lines[0] ?? "", pattern);
  assert.ok(!/\n\s+at /.test(stderr), "no stack trace");
}

describe("start-up checks", () => {
  it("refuses a non-loopback address without API keys, and bad settings, with exit code 2", () => {
    const run = (env: Record<string, string>) => runMain(env);
    const open = run({ AGENTSTORE_LISTEN: "0.0.0.0:0" });
    assert.equal(open.status, 2);
    assert.match(open.stderr, /refusing to listen on 0\.0\.0\.0 without API keys/);
    const bad = run({ AGENTSTORE_MAX_EVENT_BYTES: "lots", DATABASE_URL: "mysql://root:hunter2@x/db" });
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /AGENTSTORE_MAX_EVENT_BYTES/);
    assert.match(bad.stderr, /DATABASE_URL/);
    assert.ok(!bad.stderr.includes("hunter2"), "the database password is not echoed");
  });
});

const freshPgSkip = (await postgres()).skip;
describe("start-up failures an operator can fix are one clear line", () => {
  it("an unreachable PostgreSQL is named as unreachable (with AGENTSTORE_MIGRATE=false too), without its password", async () => {
    const port = await freePort();
    for (const migrate of ["true", "false"]) {
      const result = runMain({
        DATABASE_URL: `postgres://app:hunter2@127.0.0.1:${port}/agentstore`,
        AGENTSTORE_MIGRATE: migrate,
      });
      assert.equal(result.status, 1, result.stderr);
      assertOneLine(
        result.stderr,
        new RegExp(
          `cannot reach the database at postgres://app:\\*\\*\\*@127\\.0\\.0\\.1:${port}/agentstore \\(DATABASE_URL\\)`,
        ),
      );
      assert.ok(!result.stderr.includes("schema is behind"));
      assert.ok(!(result.stdout + result.stderr).includes("hunter2"), "the password is not shown");
    }
  });

  it("a role PostgreSQL does not know is a refused login, in one line", { skip: freshPgSkip }, () => {
    const url = new URL(ADMIN_URL);
    url.username = "agentstore_no_such_role";
    const result = runMain({ DATABASE_URL: url.toString(), AGENTSTORE_MIGRATE: "false" });
    assert.equal(result.status, 1, result.stderr);
    assertOneLine(
      result.stderr,
      /PostgreSQL at .* \(DATABASE_URL\) refused the login: .*agentstore_no_such_role/,
    );
  });

  it("two servers on one embedded data directory: the second names the directory and the first's pid", async () => {
    const db = await pglite().create();
    const first = await spawnServer(db.env);
    try {
      const second = runMain(db.env);
      assert.equal(second.status, 1, second.stderr);
      assertOneLine(second.stderr, /data directory .* is in use by another agentstore process \(pid \d+\)/);
      assert.ok(second.stderr.includes(`pid ${first.child.pid}`));
      const migrate = runMain(db.env, ["migrate"]);
      assert.equal(migrate.status, 1, "migrate respects the lock too");
      // The first server was never disturbed.
      const client = createClient({ baseUrl: first.url });
      assert.ok((await client.runs.createRun({ run: {} })).run?.runId);
      client.close();
    } finally {
      // Killed, so that its lock file stays behind.
      await first.stop("SIGKILL");
    }
    // A lock left behind by a process that is gone is taken over.
    assert.ok(
      existsSync(join(db.env.AGENTSTORE_DATA_DIR ?? "", "agentstore.lock")),
      "the lock file was left behind",
    );
    const again = await spawnServer(db.env);
    await again.stop();
    await db.drop();
  });
});

const freshPg = await postgres();
describe("a fresh PostgreSQL", { skip: freshPg.skip }, () => {
  it("the README's DATABASE_URL command creates a missing database; with AGENTSTORE_MIGRATE=false it says how", async () => {
    const name = `agentstore_fresh_${process.pid}_${Date.now().toString(36)}`;
    const url = new URL(ADMIN_URL);
    url.pathname = `/${name}`;
    const admin = new pg.Client({ connectionString: ADMIN_URL });
    await admin.connect();
    try {
      const refused = runMain({ DATABASE_URL: url.toString(), AGENTSTORE_MIGRATE: "false" });
      assert.equal(refused.status, 1);
      assertOneLine(refused.stderr, new RegExp(`the database "${name}" does not exist .*createdb "${name}"`));
      const server = await spawnServer({ DATABASE_URL: url.toString() });
      const client = createClient({ baseUrl: server.url });
      assert.ok((await client.runs.createRun({ run: {} })).run?.runId);
      client.close();
      await server.stop();
    } finally {
      await admin.query(`drop database if exists ${name} with (force)`);
      await admin.end();
    }
  });
});
