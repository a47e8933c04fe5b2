/**
 * The 8-client `AppendRunEvents` load of the write-path issue (#8), for profiling: one server as its
 * own process on a fresh PostgreSQL database (optionally under `node --cpu-prof`), N clients
 * (`createClient`, one HTTP/2 connection each) appending one event per call to their own run for
 * --seconds, and around that load:
 *
 * - CPU of this process, the server, PostgreSQL (this database's backends and the cluster's own
 *   processes), the activity sampler, and everything else, from /proc;
 * - the server's notifications, counted by a LISTEN of its channel: one per committed append group;
 * - pg_stat_database deltas of the database (xact_commit), read after an
 *   11 s pause on both sides so that backends have flushed their counters (PostgreSQL 15 flushes an
 *   idle backend's statistics within 10 s), with the server's background rate measured while idle
 *   and subtracted. Note that a LISTENing backend commits a transaction of its own each time it
 *   reads incoming notifications (async.c ProcessIncomingNotify), so xact_commit counts those too;
 * - pg_stat_statements deltas (statements per call), when the cluster preloads it;
 * - pg_stat_activity sampled every 10 ms (--sample), by wait event and statement.
 *
 *   node bench/write-path-profile.ts --server-dir /tmp/wp-head --sample
 *   node bench/write-path-profile.ts --server-dir /tmp/wp-head --cpu-prof-dir /tmp/prof
 *
 * With --cpu-prof-dir the server is stopped with SIGTERM at the end (which writes the profile) and
 * the load window is printed in the monotonic clock of the profile's timestamps, for
 * bench/profile-summary.ts --from/--to.
 */
import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { writeFileSync } from "node:fs";
import { cpus } from "node:os";
import { resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import pg from "pg";
import { type AgentStoreClient, createClient } from "../src/client/index.ts";
import { type ActivitySummary, cpuMeter, load, pct, startActivitySampler } from "./pg-activity.ts";

const { values: args } = parseArgs({
  options: {
    "server-dir": { type: "string", default: fileURLToPath(new URL("..", import.meta.url)) },
    "cpu-prof-dir": { type: "string" },
    seconds: { type: "string", default: "10" },
    warmup: { type: "string", default: "2" },
    clients: { type: "string", default: "8" },
    batch: { type: "string", default: "1" },
    "write-groups": { type: "string" },
    sample: { type: "boolean", default: false },
    "admin-url": { type: "string", default: "postgres://postgres@127.0.0.1:5432/postgres" },
    json: { type: "string" },
    help: { type: "boolean", default: false },
  },
});
if (args.help) {
  console.log(
    "node bench/write-path-profile.ts [--server-dir DIR] [--cpu-prof-dir DIR] [--seconds 10] [--warmup 2] [--clients 8] [--batch 1] [--write-groups N] [--sample] [--admin-url URL] [--json FILE]",
  );
  process.exit(0);
}
const SECONDS = Number(args.seconds);
const CLIENTS = Number(args.clients);
const BATCH = Number(args.batch);
const ADMIN_URL = args["admin-url"] ?? "";
const SERVER_DIR = resolve(args["server-dir"] ?? ".");
const DATABASE = "agentstore_wp_profile";
const dbUrl = (() => {
  const u = new URL(ADMIN_URL);
  u.pathname = `/${DATABASE}`;
  return u.toString();
})();
const STATS_FLUSH_MS = 11_000;
const IDLE_WINDOW_MS = 5_000;

const FILLER =
  "Ran the test suite: 214 passed, 3 skipped in 41.2 s. Next I will update the migration, " +
  "re-run the integration tests against PostgreSQL and summarise the diff for review. ";
const base = { role: "assistant", model: "gpt-5", index: 0, text: "" };
const EVENTS = Array.from({ length: BATCH }, (_, i) => ({
  type: "assistant_message",
  payload: { ...base, index: i, text: FILLER.repeat(2).slice(0, 210 - JSON.stringify(base).length) },
}));

const monotonicMicros = () => Number(process.hrtime.bigint() / 1000n);

async function connect(url: string): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: url });
  c.on("error", (err) => console.error("pg:", err.message));
  await c.connect();
  return c;
}

interface DbStats {
  xact_commit: number;
  xact_rollback: number;
  tup_inserted: number;
  tup_updated: number;
}
async function dbStats(admin: pg.Client): Promise<DbStats> {
  // A new snapshot: stats_fetch_consistency caches within a transaction only, and this is autocommit.
  const { rows } = await admin.query<Record<keyof DbStats, string>>(
    "select xact_commit, xact_rollback, tup_inserted, tup_updated from pg_stat_database where datname = $1",
    [DATABASE],
  );
  const r = rows[0];
  if (r === undefined) throw new Error("no pg_stat_database row");
  return {
    xact_commit: Number(r.xact_commit),
    xact_rollback: Number(r.xact_rollback),
    tup_inserted: Number(r.tup_inserted),
    tup_updated: Number(r.tup_updated),
  };
}
const minus = (a: DbStats, b: DbStats): DbStats => ({
  xact_commit: a.xact_commit - b.xact_commit,
  xact_rollback: a.xact_rollback - b.xact_rollback,
  tup_inserted: a.tup_inserted - b.tup_inserted,
  tup_updated: a.tup_updated - b.tup_updated,
});

async function main() {
  const admin = await connect(ADMIN_URL);
  await admin.query(`drop database if exists ${DATABASE} with (force)`);
  await admin.query(`create database ${DATABASE}`);
  const preload = (
    await admin.query<{ s: string }>("select current_setting('shared_preload_libraries') as s")
  ).rows[0]?.s;
  const statements = preload?.includes("pg_stat_statements") ?? false;
  if (statements) {
    const db = await connect(dbUrl);
    await db.query("create extension if not exists pg_stat_statements");
    await db.end();
  }

  const nodeArgs = args["cpu-prof-dir"] ? ["--cpu-prof", `--cpu-prof-dir=${args["cpu-prof-dir"]}`] : [];
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? "",
    DATABASE_URL: dbUrl,
    AGENTSTORE_LISTEN: "127.0.0.1:0",
    AGENTSTORE_LOG_LEVEL: "info",
  };
  if (args["write-groups"]) env.AGENTSTORE_DB_WRITE_GROUPS = args["write-groups"];
  const child = spawn(process.execPath, [...nodeArgs, "src/main.ts"], {
    cwd: SERVER_DIR,
    env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  process.on("exit", () => child.kill("SIGKILL"));
  const exited = new Promise<number | null>((done) => child.once("exit", (code) => done(code)));
  const warnings: string[] = [];
  const port = await new Promise<number>((ok, fail) => {
    let pending = "";
    child.stdout?.setEncoding("utf8");
    child.stdout?.on("data", (chunk: string) => {
      const lines = (pending + chunk).split("\n");
      pending = lines.pop() ?? "";
      for (const line of lines) {
        try {
          const e = JSON.parse(line) as { msg?: string; port?: number; level?: number };
          if (e.msg === "agentstore serving" && typeof e.port === "number") ok(e.port);
          if ((e.level ?? 0) >= 40) warnings.push(line);
        } catch {}
      }
    });
    child.stderr?.on("data", (chunk) => warnings.push(String(chunk)));
    child.once("exit", (code) =>
      fail(new Error(`server exited (${code}) before serving: ${warnings.join("\n")}`)),
    );
  });
  const serverPid = child.pid ?? 0;
  const url = `http://127.0.0.1:${port}`;

  const clients: AgentStoreClient[] = Array.from({ length: CLIENTS }, () => createClient({ baseUrl: url }));
  const runIds = await Promise.all(
    clients.map(async (c) => {
      const { run } = await c.runs.createRun({ run: {}, requestId: randomUUID() });
      if (run === undefined) throw new Error("no run");
      return run.runId;
    }),
  );
  const loop = async (untilMs: number, latencies?: number[]) => {
    const counts = await Promise.all(
      clients.map(async (c, i) => {
        let n = 0;
        while (performance.now() < untilMs) {
          const t0 = performance.now();
          await c.runs.appendRunEvents({ runId: runIds[i] ?? "", events: EVENTS });
          latencies?.push(performance.now() - t0);
          n++;
        }
        return n;
      }),
    );
    return counts.reduce((a, b) => a + b, 0);
  };

  console.error(`[${new Date().toISOString()}] server pid ${serverPid} on ${url}; warm-up ${args.warmup} s`);
  await loop(performance.now() + Number(args.warmup) * 1000);
  await sleep(STATS_FLUSH_MS);
  const s0 = await dbStats(admin);
  await sleep(IDLE_WINDOW_MS);
  const s1 = await dbStats(admin);
  const idle = minus(s1, s0);
  if (statements) {
    const db = await connect(dbUrl);
    await db.query("select pg_stat_statements_reset()");
    await db.end();
  }

  // The server notifies once per committed append group (a JSON array of the runs that grew), so
  // a listener of its channel counts groups; its own backend's wake-ups also count in xact_commit.
  const listener = await connect(dbUrl);
  let notifications = 0;
  let notifiedRuns = 0;
  let counting = false;
  listener.on("notification", (msg) => {
    if (!counting) return;
    notifications++;
    notifiedRuns += (JSON.parse(msg.payload ?? "[]") as unknown[]).length;
  });
  await listener.query("listen agentstore_changes");

  const sampler = args.sample ? startActivitySampler(ADMIN_URL, DATABASE, 10) : undefined;
  if (sampler !== undefined) {
    await sleep(300);
    sampler.reset();
  }
  const loadBefore = load();
  const meter = await cpuMeter(admin, DATABASE, serverPid, sampler?.pid ?? 0);
  const latencies: number[] = [];
  const from = monotonicMicros();
  const started = performance.now();
  counting = true;
  const calls = await loop(started + SECONDS * 1000, latencies);
  const seconds = (performance.now() - started) / 1000;
  const to = monotonicMicros();
  await sleep(200); // the last notifications
  counting = false;
  await listener.end();
  const cpu = await meter();
  const loadAfter = load();
  const activity: ActivitySummary | undefined = await sampler?.stop();

  await sleep(STATS_FLUSH_MS);
  const s2 = await dbStats(admin);
  const window = minus(s2, s1);
  const backgroundPerSecond = idle.xact_commit / (IDLE_WINDOW_MS / 1000);
  const backgroundCommits = backgroundPerSecond * (seconds + STATS_FLUSH_MS / 1000);
  const loadCommits = window.xact_commit - backgroundCommits;

  let statementRows: Array<{ calls: number; rows: number; mean_ms: number; query: string }> = [];
  if (statements) {
    const db = await connect(dbUrl);
    statementRows = (
      await db.query<{ calls: string; rows: string; mean_ms: number; query: string }>(
        `select calls, rows, mean_exec_time as mean_ms, left(regexp_replace(query, '\\s+', ' ', 'g'), 90) as query
         from pg_stat_statements where dbid = (select oid from pg_database where datname = current_database())
         order by calls desc limit 15`,
      )
    ).rows.map((r) => ({ calls: Number(r.calls), rows: Number(r.rows), mean_ms: r.mean_ms, query: r.query }));
    await db.end();
  }

  latencies.sort((a, b) => a - b);
  const q = (p: number) =>
    latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))] ?? Number.NaN;
  const result = {
    at: new Date().toISOString(),
    cores: cpus().length,
    serverDir: SERVER_DIR,
    cpuProf: args["cpu-prof-dir"] ?? null,
    writeGroups: args["write-groups"] ?? "default",
    clients: CLIENTS,
    batch: BATCH,
    seconds,
    calls,
    callsPerSecond: calls / seconds,
    latencyMs: { p50: q(0.5), p90: q(0.9), p99: q(0.99), max: latencies.at(-1) },
    cpu,
    serverCpuMsPerCall: ((cpu.server / 100) * seconds * 1000) / calls,
    benchCpuMsPerCall: ((cpu.bench / 100) * seconds * 1000) / calls,
    postgresCpuMsPerCall: ((cpu.postgres / 100) * seconds * 1000) / calls,
    load: { before: loadBefore, after: loadAfter },
    dbIdle5s: idle,
    dbWindow: window,
    loadCommits,
    xactCommitPerCall: loadCommits / calls,
    notifications,
    notifiedRuns,
    callsPerNotification: calls / notifications,
    statements: statementRows,
    activity:
      activity === undefined
        ? null
        : {
            samples: activity.samples,
            seconds: activity.seconds,
            samplesWithLock: activity.samplesWithLock,
            samplesWithLWLock: activity.samplesWithLWLock,
            classes: Object.fromEntries([...activity.classes].sort((a, b) => b[1] - a[1])),
            waits: Object.fromEntries([...activity.waitsByQuery].sort((a, b) => b[1] - a[1]).slice(0, 12)),
          },
    profileWindowMicros: { from, to },
    warnings: warnings.slice(0, 5),
  };

  for (const c of clients) c.close();
  child.kill("SIGTERM");
  const code = await exited;
  result.warnings.push(`server exit code ${code}`);
  await admin.query(`drop database if exists ${DATABASE} with (force)`);
  await admin.end();

  console.error(
    `${calls} calls in ${seconds.toFixed(2)} s = ${result.callsPerSecond.toFixed(0)} calls/s; p50 ${result.latencyMs.p50.toFixed(2)} ms p99 ${result.latencyMs.p99.toFixed(2)} ms; ` +
      `CPU bench/server/postgres/sampler/other ${pct(cpu)}; load ${loadBefore} → ${loadAfter}; ` +
      `commits in window ${window.xact_commit} (background ${backgroundCommits.toFixed(0)}) → ${result.xactCommitPerCall.toFixed(3)} xact_commit per call; ` +
      `${notifications} notifications (${notifiedRuns} runs) → ${result.callsPerNotification.toFixed(2)} calls per notifying commit`,
  );
  const out = JSON.stringify(result, null, 2);
  if (args.json) writeFileSync(args.json, out);
  else console.log(out);
}

await main();
