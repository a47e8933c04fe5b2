/**
 * Write-path benchmark (issue #8): agentstore's append path side by side with raw `pg` doing the
 * same writes on the same PostgreSQL, in one run. Absolute figures depend on the machine; the
 * ratios, measured minutes apart on the same database server, mostly do not.
 *
 *   npm run bench:write-path                                   # everything, ~6 min on 2 cores
 *   npm run bench:write-path -- --only throughput --seconds 1 --reps 3
 *   npm run bench:write-path -- --only fanout --subscribers 200 --fanout-seconds 3
 *
 * The server runs as its own process (`node src/main.ts`) on a fresh database; raw `pg` writes to a
 * copy of the server's event table in a schema of that database, so both pay for the same row
 * shape, primary key, WAL and fsync. Every table is emptied (TRUNCATE: new, empty files) and a
 * CHECKPOINT is taken before each measured side, so neither inherits the other's dirty pages.
 * Client and server share the machine's cores: the CPU table says who was busy.
 *
 * Prints Markdown and writes it to bench/results/write-path.md (see --out).
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { cpus, tmpdir, totalmem } from "node:os";
import { dirname, join, resolve } from "node:path";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import type { JsonObject } from "@bufbuild/protobuf";
import pg from "pg";
import { type AgentStoreClient, createClient, RunStatus } from "../src/client/index.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const SECTIONS = ["throughput", "latency", "stream", "fanout"] as const;
type Section = (typeof SECTIONS)[number];

const USAGE = `node bench/write-path.ts [options]
  --seconds N          duration of each throughput cell, per side and repetition (3)
  --reps N             repetitions; tables report medians (3)
  --only LIST          comma-separated sections: ${SECTIONS.join(",")} (all)
  --latency-calls N    sequential appends per latency repetition (1000)
  --stream-events N    appends per ack→subscriber repetition (300)
  --subscribers N      fan-out subscribers of one run (1000)
  --connections N      client connections the subscribers share (4)
  --fanout-seconds N   how long the paced writer runs (10)
  --fanout-rate N      events per second the writer appends (100)
  --admin-url URL      PostgreSQL to create the throwaway database on ($TEST_POSTGRES_URL or
                       postgres://postgres@127.0.0.1:5432/postgres)
  --server-ref REV     serve a clean \`git archive\` export of this commit instead of the working
                       tree (while src/ is being edited, so that every server runs the same code)
  --out FILE           Markdown result file (bench/results/write-path.md)`;

const { values: args } = parseArgs({
  options: {
    seconds: { type: "string", default: "3" },
    reps: { type: "string", default: "3" },
    only: { type: "string", default: SECTIONS.join(",") },
    "latency-calls": { type: "string", default: "1000" },
    "stream-events": { type: "string", default: "300" },
    subscribers: { type: "string", default: "1000" },
    connections: { type: "string", default: "4" },
    "fanout-seconds": { type: "string", default: "10" },
    "fanout-rate": { type: "string", default: "100" },
    "admin-url": {
      type: "string",
      default: process.env.TEST_POSTGRES_URL ?? "postgres://postgres@127.0.0.1:5432/postgres",
    },
    "server-ref": { type: "string" },
    out: { type: "string", default: "bench/results/write-path.md" },
    help: { type: "boolean", default: false },
  },
});
if (args.help) {
  console.log(USAGE);
  process.exit(0);
}

function flag(name: keyof typeof args, integer = true): number {
  const value = Number(args[name]);
  if (!(value > 0) || (integer && !Number.isInteger(value))) {
    console.error(`--${name} must be a positive ${integer ? "integer" : "number"}\n\n${USAGE}`);
    process.exit(2);
  }
  return value;
}
const SECONDS = flag("seconds", false);
const REPS = flag("reps");
const LATENCY_CALLS = flag("latency-calls");
const STREAM_EVENTS = flag("stream-events");
const SUBSCRIBERS = flag("subscribers");
const CONNECTIONS = flag("connections");
const FANOUT_SECONDS = flag("fanout-seconds", false);
const FANOUT_RATE = flag("fanout-rate", false);
const ADMIN_URL = args["admin-url"] ?? "";
const OUT = resolve(ROOT, args.out ?? "bench/results/write-path.md");
const ONLY = new Set((args.only ?? "").split(",").map((s) => s.trim()));
for (const name of ONLY) {
  if (!(SECTIONS as readonly string[]).includes(name)) {
    console.error(`--only: unknown section "${name}"\n\n${USAGE}`);
    process.exit(2);
  }
}
const wanted = (section: Section) => ONLY.has(section);

/** Throwaway database; the server owns `public`, raw pg writes to `raw_pg`. */
const DATABASE = "agentstore_write_path";
const RAW_CHANNEL = "raw_pg_changes";
const EVENT_TYPE = "assistant_message";
const TENANT = "default";
const PAYLOAD_BYTES = 210;
const THROUGHPUT_CELLS = [
  { clients: 8, batch: 1 },
  { clients: 8, batch: 10 },
  { clients: 8, batch: 100 },
  { clients: 1, batch: 1 },
  { clients: 1, batch: 10 },
  { clients: 1, batch: 100 },
] as const;
type Cell = (typeof THROUGHPUT_CELLS)[number];

// The raw floor for throughput: one autocommit statement per batch, the same rows, seqs counted by
// the client (there is no run row to lock), no notify. `unnest` keeps one statement text for every
// batch size.
const RAW_INSERT = `insert into raw_pg.run_events (tenant_id, run_id, seq, type, payload)
  select $1, $2::uuid, $3::bigint + u.ord, u.type, u.payload
  from unnest($4::text[], $5::jsonb[]) with ordinality as u(type, payload, ord)`;
const RAW_READ = `select seq, type, payload from raw_pg.run_events
  where tenant_id = $1 and run_id = $2 and seq > $3 order by seq`;
// Used only when the server's schema has no `run_events` table to copy (src/ is being reshaped).
const RAW_TABLE_FALLBACK = `create table raw_pg.run_events (tenant_id text not null, run_id uuid not null,
  seq bigint not null, type text not null, payload jsonb not null,
  created_at timestamptz(3) not null default current_timestamp(3), primary key (tenant_id, run_id, seq))`;

// ---------------------------------------------------------------------------------------------
// Clean-up: clients, then servers, then the database, on success, failure or Ctrl-C.

const openClients = new Set<AgentStoreClient>();
const openConns = new Set<pg.Client>();
const servers = new Set<Server>();
let dropDatabase: (() => Promise<void>) | undefined;
let removeExport: (() => void) | undefined;
let cleaning: Promise<void> | undefined;
function cleanUp(): Promise<void> {
  cleaning ??= (async () => {
    for (const client of openClients) client.close();
    for (const conn of openConns) await disconnect(conn);
    for (const server of [...servers]) {
      await server.stop().catch((err) => console.error("stopping a server:", err));
    }
    await dropDatabase?.().catch((err) => console.error("dropping the database:", err));
    removeExport?.();
  })();
  return cleaning;
}
const children = new Set<ChildProcess>();
// Last resort when the process exits without clean-up (an uncaught error): no orphaned servers.
process.on("exit", () => {
  for (const child of children) child.kill("SIGKILL");
});
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    console.error(`\n${signal}: cleaning up`);
    void cleanUp().finally(() => process.exit(130));
  });
}
const progress = (message: string) => console.error(`[${new Date().toISOString().slice(11, 19)}] ${message}`);

// ---------------------------------------------------------------------------------------------
// Servers, clients, connections.

interface Server {
  name: string;
  url: string;
  pid: number;
  /** Warn-or-worse log lines, reported at the end. */
  warnings: string[];
  stop(): Promise<void>;
}

async function startServer(name: string, databaseUrl: string): Promise<Server> {
  const child = spawn(process.execPath, ["src/main.ts"], {
    cwd: serverDir,
    env: {
      PATH: process.env.PATH ?? "",
      DATABASE_URL: databaseUrl,
      AGENTSTORE_LISTEN: "127.0.0.1:0",
      AGENTSTORE_LOG_LEVEL: "info",
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.add(child);
  const exited = new Promise<void>((done) =>
    child.once("exit", () => {
      children.delete(child);
      done();
    }),
  );
  const stop = async () => {
    servers.delete(server);
    if (child.exitCode !== null || child.signalCode !== null) return;
    // Keep its CPU in the books of the section that stops it.
    retiredServerTicks += processTicks(child.pid ?? 0) || 0;
    child.kill("SIGTERM");
    // Shutdown waits for calls in flight (10 s by default); past that it is stuck.
    const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
    await exited;
    clearTimeout(timer);
  };

  const warnings: string[] = [];
  const server: Server = { name, url: "", pid: child.pid ?? 0, warnings, stop };
  servers.add(server);
  const port = await new Promise<number>((resolvePort, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} did not serve within 60 s`)), 60_000);
    let pending = "";
    child.stdout?.setEncoding("utf8");
    child.stdout?.on("data", (chunk: string) => {
      const lines = (pending + chunk).split("\n");
      pending = lines.pop() ?? "";
      for (const line of lines) {
        let entry: { level?: number; msg?: string; port?: number };
        try {
          entry = JSON.parse(line);
        } catch {
          continue;
        }
        if (entry.msg === "agentstore serving" && typeof entry.port === "number") {
          clearTimeout(timer);
          resolvePort(entry.port);
        }
        if ((entry.level ?? 0) >= 40) {
          warnings.push(line);
          console.error(`[${name}] ${line}`);
        }
      }
    });
    child.stderr?.setEncoding("utf8");
    child.stderr?.on("data", (chunk: string) => {
      warnings.push(chunk.trimEnd());
      process.stderr.write(`[${name} stderr] ${chunk}`);
    });
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited (${code ?? signal}) before serving`));
    });
  });
  server.url = `http://127.0.0.1:${port}`;
  return server;
}

function openClient(url: string): AgentStoreClient {
  const client = createClient({ baseUrl: url });
  openClients.add(client);
  return client;
}
function closeClient(client: AgentStoreClient): void {
  if (openClients.delete(client)) client.close();
}

async function connect(url: string): Promise<pg.Client> {
  const conn = new pg.Client({ connectionString: url });
  // An unhandled 'error' event would crash the run without clean-up.
  conn.on("error", (err) => console.error("pg connection error:", err.message));
  openConns.add(conn);
  await conn.connect();
  return conn;
}
async function disconnect(conn: pg.Client): Promise<void> {
  if (openConns.delete(conn)) await conn.end().catch(() => {});
}

async function newRun(client: AgentStoreClient): Promise<string> {
  const { run } = await client.runs.createRun({ run: {}, requestId: randomUUID() });
  if (run === undefined) throw new Error("CreateRun answered without a run");
  return run.runId;
}

// ---------------------------------------------------------------------------------------------
// Payloads: the same ~210 JSON bytes on both sides.

const FILLER =
  "Ran the test suite: 214 passed, 3 skipped in 41.2 s. Next I will update the migration, " +
  "re-run the integration tests against PostgreSQL and summarise the diff for review. ";
function payload(index: number): JsonObject {
  const base = { role: "assistant", model: "gpt-5", index, text: "" };
  const room = Math.max(0, PAYLOAD_BYTES - JSON.stringify(base).length);
  return { ...base, text: FILLER.repeat(Math.ceil(room / FILLER.length)).slice(0, room) };
}
/** One batch, built once per size so that each call only pays for sending it. */
function batchOf(size: number) {
  const events = Array.from({ length: size }, (_, i) => ({ type: EVENT_TYPE, payload: payload(i) }));
  return {
    events,
    types: events.map((e) => e.type),
    payloads: events.map((e) => JSON.stringify(e.payload)),
  };
}

/** Raw equivalent of AppendRunEvents with its change notification, in the server's order. */
async function rawAppendTransaction(
  conn: pg.Client,
  runId: string,
  seq: number,
  batch: ReturnType<typeof batchOf>,
) {
  await conn.query("begin");
  await conn.query(RAW_INSERT, [TENANT, runId, seq, batch.types, batch.payloads]);
  await conn.query("select pg_notify($1, $2)", [
    RAW_CHANNEL,
    JSON.stringify(["run_events", TENANT, runId, seq + batch.events.length]),
  ]);
  await conn.query("commit");
}

// ---------------------------------------------------------------------------------------------
// Statistics and CPU accounting.

const percentile = (sorted: readonly number[], p: number) =>
  sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN;
function quantiles(samples: readonly number[]) {
  const sorted = [...samples].sort((a, b) => a - b);
  return { p50: percentile(sorted, 50), p99: percentile(sorted, 99), max: sorted.at(-1) ?? Number.NaN };
}
function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  if (sorted.length === 0) return Number.NaN;
  return sorted.length % 2 === 1
    ? (sorted[mid] ?? Number.NaN)
    : ((sorted[mid - 1] ?? 0) + (sorted[mid] ?? 0)) / 2;
}
const int = (v: number) => (Number.isFinite(v) ? Math.round(v).toLocaleString("en-US") : "n/a");
const ms = (v: number) => (Number.isFinite(v) ? v.toFixed(2) : "n/a");
const ratio = (v: number) => (Number.isFinite(v) ? (v >= 10 ? v.toFixed(1) : v.toPrecision(2)) : "n/a");
const pct = (v: number) => (Number.isFinite(v) ? `${Math.round(v)}%` : "n/a");

const CLOCK_TICKS = (() => {
  try {
    return Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
  } catch {
    return 100;
  }
})();
/** user + system CPU ticks of a process, or NaN once it is gone. */
function processTicks(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return Number(fields[11]) + Number(fields[12]);
  } catch {
    return Number.NaN;
  }
}
interface CpuShare {
  /** Percent of one core, over the measured interval. */
  bench: number;
  server: number;
  postgres: number;
  /** Everything else on the machine: other people's work disturbs the figures. */
  other: number;
}
/** Busy ticks of the whole machine (user, nice, system, irq, softirq, steal). */
function machineTicks(): number {
  const [, user, nice, system, , , irq, softirq, steal] = (
    readFileSync("/proc/stat", "utf8").split("\n")[0] ?? ""
  )
    .trim()
    .split(/\s+/)
    .map(Number);
  return [user, nice, system, irq, softirq, steal].reduce<number>((sum, v) => sum + (v ?? 0), 0);
}
/** CPU ticks of every agentstore server this run started, also those already stopped. */
let retiredServerTicks = 0;
function serverTicks(): number {
  let ticks = retiredServerTicks;
  for (const server of servers) ticks += processTicks(server.pid) || 0;
  return ticks;
}
/** A connection to the benchmark's database, to tell its backends from other people's. */
let monitor: pg.Client | undefined;
/**
 * PostgreSQL processes working for this run: the backends of its database and the cluster's own
 * processes (WAL writer, checkpointer...). Other databases' backends are someone else's work.
 */
async function ourPostgresPids(): Promise<Set<number>> {
  if (monitor === undefined) return new Set();
  const { rows } = await monitor.query<{ pid: number }>(
    "select pid from pg_stat_activity where datname = current_database() or datname is null",
  );
  return new Set(rows.map((r) => r.pid));
}
/**
 * Starts a CPU meter: who was busy while a measurement ran (on 2 cores, 200% is everything).
 * PostgreSQL backends come and go during a measurement (a test's connections, an idle pool
 * connection closing, autovacuum), so ours are sampled a few times a second; a backend that exits
 * loses at most one interval of its CPU.
 */
async function cpuMeter(): Promise<() => Promise<CpuShare>> {
  const first = new Map<number, number>();
  const latest = new Map<number, number>();
  let sampling: Promise<void> | undefined;
  const sample = (starting: boolean) => {
    sampling ??= ourPostgresPids()
      .then((pids) => {
        for (const pid of pids) {
          const ticks = processTicks(pid);
          if (Number.isNaN(ticks)) continue; // not on this machine, or already gone
          // A backend first seen after the start was born during the measurement: all its CPU counts.
          if (!first.has(pid)) first.set(pid, starting ? ticks : 0);
          latest.set(pid, ticks);
        }
      })
      .finally(() => {
        sampling = undefined;
      });
    return sampling;
  };
  await sample(true);
  const timer = setInterval(() => void sample(false).catch(() => {}), 200);
  const started = performance.now();
  const self = process.cpuUsage();
  const serversBefore = serverTicks();
  const machine = machineTicks();
  return async () => {
    const seconds = (performance.now() - started) / 1000;
    const used = process.cpuUsage(self);
    const machineAfter = machineTicks();
    const serversAfter = serverTicks();
    clearInterval(timer);
    await sampling?.catch(() => {});
    await sample(false);
    let pgTicks = 0;
    for (const [pid, ticks] of latest) pgTicks += ticks - (first.get(pid) ?? 0);
    const share = (ticks: number) => (ticks / CLOCK_TICKS / seconds) * 100;
    const bench = ((used.user + used.system) / 1e6 / seconds) * 100;
    const server = share(serversAfter - serversBefore);
    // No PostgreSQL process visible: the database runs elsewhere and its CPU is unknown.
    const postgres = latest.size === 0 ? Number.NaN : share(pgTicks);
    return {
      bench,
      server,
      postgres,
      other: Math.max(
        0,
        share(machineAfter - machine) - bench - server - (Number.isNaN(postgres) ? 0 : postgres),
      ),
    };
  };
}
function medianCpu(shares: readonly CpuShare[]): CpuShare {
  return {
    bench: median(shares.map((s) => s.bench)),
    server: median(shares.map((s) => s.server)),
    postgres: median(shares.map((s) => s.postgres)),
    other: median(shares.map((s) => s.other)),
  };
}

function rssMiB(pid: number): number {
  try {
    const kb = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1];
    return kb === undefined ? Number.NaN : Number(kb) / 1024;
  } catch {
    return Number.NaN;
  }
}

/**
 * Arrival times by seq. A subscriber marks what it holds; the writer waits for a seq, which may
 * already have arrived before the append's response did.
 */
class Arrivals {
  readonly #times = new Map<number, number>();
  readonly #waiters = new Map<number, (at: number) => void>();

  mark(seq: number): void {
    const at = performance.now();
    const waiter = this.#waiters.get(seq);
    if (waiter === undefined) {
      this.#times.set(seq, at);
    } else {
      this.#waiters.delete(seq);
      waiter(at);
    }
  }

  when(seq: number, timeoutMs = 10_000): Promise<number> {
    const at = this.#times.get(seq);
    if (at !== undefined) {
      this.#times.delete(seq);
      return Promise.resolve(at);
    }
    return new Promise((resolveAt, reject) => {
      const timer = setTimeout(() => {
        this.#waiters.delete(seq);
        reject(new Error(`seq ${seq} did not reach the subscriber within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#waiters.set(seq, (arrived) => {
        clearTimeout(timer);
        resolveAt(arrived);
      });
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Fresh tables.

interface Tables {
  /** Empties every table and recreates the raw one; then a checkpoint, so each side starts clean. */
  fresh(): Promise<void>;
  /** Rows in the server's event table (NaN when it has none by that name) and in the raw table. */
  counts(): Promise<{ server: number; raw: number }>;
  rawShape: string;
}

async function prepareTables(setup: pg.Client): Promise<Tables> {
  await setup.query("create schema raw_pg");
  const hasServerTable =
    (await setup.query<{ ok: boolean }>("select to_regclass('public.run_events') is not null as ok")).rows[0]
      ?.ok === true;
  // Copying the server's table keeps raw pg on the same row shape and indexes as the schema evolves.
  const createRaw = hasServerTable
    ? "create table raw_pg.run_events (like public.run_events including all)"
    : RAW_TABLE_FALLBACK;
  return {
    rawShape: hasServerTable
      ? "a copy of the server's `run_events` table (`like … including all`: same columns, primary key, defaults)"
      : "a table shaped like the server's events (the server has no `public.run_events` table to copy)",
    async fresh() {
      const { rows } = await setup.query<{ name: string }>(
        `select format('%I.%I', schemaname, tablename) as name from pg_tables
         where schemaname = 'public' and tablename not like '%migrations%'`,
      );
      if (rows.length > 0) await setup.query(`truncate ${rows.map((r) => r.name).join(", ")}`);
      await setup.query("drop table if exists raw_pg.run_events");
      await setup.query(createRaw);
      await setup.query("checkpoint");
    },
    async counts() {
      const raw = (await setup.query<{ n: string }>("select count(*) as n from raw_pg.run_events")).rows[0]
        ?.n;
      const server = hasServerTable
        ? (await setup.query<{ n: string }>("select count(*) as n from public.run_events")).rows[0]?.n
        : undefined;
      return { server: server === undefined ? Number.NaN : Number(server), raw: Number(raw) };
    },
  };
}

// ---------------------------------------------------------------------------------------------
// 1. Throughput.

interface Rate {
  rowsPerSecond: number;
  callsPerSecond: number;
  /** Rows acknowledged, checked against the table afterwards. */
  rows: number;
  cpu: CpuShare;
}

/**
 * Runs `clients` loops of `batch`-row calls until the deadline; the call in flight at the deadline
 * still counts, and so does the time it took.
 */
async function timedLoops(
  clients: number,
  batch: number,
  loop: (client: number, deadline: number) => Promise<number>,
): Promise<Rate> {
  const meter = await cpuMeter();
  const started = performance.now();
  const deadline = started + SECONDS * 1000;
  const calls = (await Promise.all(Array.from({ length: clients }, (_, i) => loop(i, deadline)))).reduce(
    (a, b) => a + b,
    0,
  );
  const seconds = (performance.now() - started) / 1000;
  const cpu = await meter();
  return {
    rowsPerSecond: (calls * batch) / seconds,
    callsPerSecond: calls / seconds,
    rows: calls * batch,
    cpu,
  };
}

async function rawThroughput(conns: readonly pg.Client[], cell: Cell): Promise<Rate> {
  const batch = batchOf(cell.batch);
  return timedLoops(cell.clients, cell.batch, async (i, deadline) => {
    const conn = conns[i];
    if (conn === undefined) throw new Error(`no connection ${i}`);
    const runId = randomUUID();
    let calls = 0;
    for (let seq = 0; performance.now() < deadline; seq += cell.batch, calls++) {
      await conn.query(RAW_INSERT, [TENANT, runId, seq, batch.types, batch.payloads]);
    }
    return calls;
  });
}

/** The same loop in the server's transaction shape: shows what PostgreSQL's NOTIFY costs by itself. */
async function rawTransactionThroughput(conns: readonly pg.Client[], cell: Cell): Promise<Rate> {
  const batch = batchOf(cell.batch);
  return timedLoops(cell.clients, cell.batch, async (i, deadline) => {
    const conn = conns[i];
    if (conn === undefined) throw new Error(`no connection ${i}`);
    const runId = randomUUID();
    let calls = 0;
    for (let seq = 0; performance.now() < deadline; seq += cell.batch, calls++) {
      await rawAppendTransaction(conn, runId, seq, batch);
    }
    return calls;
  });
}

async function storeThroughput(clients: readonly AgentStoreClient[], cell: Cell): Promise<Rate> {
  const { events } = batchOf(cell.batch);
  // Each client appends to its own run, created outside the measured time.
  const runIds = await Promise.all(
    clients.slice(0, cell.clients).map((c) => newRun(c).then((runId) => ({ c, runId }))),
  );
  return timedLoops(cell.clients, cell.batch, async (i, deadline) => {
    const own = runIds[i];
    if (own === undefined) throw new Error(`no client ${i}`);
    let calls = 0;
    for (; performance.now() < deadline; calls++) {
      await own.c.runs.appendRunEvents({ runId: own.runId, events });
    }
    return calls;
  });
}

const THROUGHPUT_SIDES = {
  raw: "raw pg, autocommit insert",
  rawTransaction: "raw pg, `begin; insert; pg_notify; commit`",
  store: "agentstore",
} as const;
type ThroughputSide = keyof typeof THROUGHPUT_SIDES;
const SIDES = Object.keys(THROUGHPUT_SIDES) as ThroughputSide[];
interface ThroughputRow {
  cell: Cell;
  rates: Record<ThroughputSide, Rate[]>;
}

async function throughputSection(ctx: Context): Promise<ThroughputRow[]> {
  const conns = await Promise.all(Array.from({ length: 8 }, () => connect(ctx.databaseUrl)));
  const clients = Array.from({ length: 8 }, () => openClient(ctx.serverA.url));
  // Open every HTTP/2 session and warm the JIT on every path before anything is measured.
  const warm = { clients: 8, batch: 10 } as const;
  await ctx.tables.fresh();
  await rawThroughput(conns, warm);
  await rawTransactionThroughput(conns, warm);
  await storeThroughput(clients, warm);

  const rows: ThroughputRow[] = [];
  for (const cell of THROUGHPUT_CELLS) {
    const row: ThroughputRow = { cell, rates: { raw: [], rawTransaction: [], store: [] } };
    for (let rep = 0; rep < REPS; rep++) {
      // Rotate which side goes first, so a drift over time does not favour one of them.
      for (const side of rotate(SIDES, rep)) {
        await ctx.tables.fresh();
        const rate =
          side === "raw"
            ? await rawThroughput(conns, cell)
            : side === "rawTransaction"
              ? await rawTransactionThroughput(conns, cell)
              : await storeThroughput(clients, cell);
        // Every acknowledged row must be in its table, or the rate means nothing.
        const counts = await ctx.tables.counts();
        const stored = side === "store" ? counts.server : counts.raw;
        if (!Number.isNaN(stored) && stored !== rate.rows) {
          ctx.oddities.push(
            `throughput ${cell.clients}×${cell.batch} ${side}: ${rate.rows} rows acknowledged, ${stored} in the table`,
          );
        }
        row.rates[side].push(rate);
      }
      const last = (side: ThroughputSide) => int(row.rates[side].at(-1)?.rowsPerSecond ?? Number.NaN);
      progress(
        `throughput ${cell.clients}×${cell.batch} rep ${rep + 1}/${REPS}: raw ${last("raw")}, ` +
          `raw transaction ${last("rawTransaction")}, agentstore ${last("store")} rows/s`,
      );
    }
    rows.push(row);
  }
  for (const client of clients) closeClient(client);
  for (const conn of conns) await disconnect(conn);
  return rows;
}

function throughputMarkdown(rows: readonly ThroughputRow[]): string[] {
  const lines = [
    `## 1. Append throughput`,
    "",
    `Each client appends to its own run, one call after another, for ${SECONDS} s per cell and side; ` +
      `rows/s, median of ${REPS} repetitions (min–max in brackets). Raw pg: one \`pg.Client\` connection per ` +
      "client, one autocommit `INSERT … SELECT … FROM unnest($types, $payloads)` per batch, seqs counted by the " +
      "client. Raw pg transaction: the same insert inside `begin; …; select pg_notify(…); commit`, the statement " +
      "shape of the server's append without its run-row update. agentstore: `AppendRunEvents` over gRPC " +
      "(HTTP/2), one `createClient` (own HTTP/2 session) per client.",
    "",
    "| clients × events per call | raw pg | raw pg transaction + notify | agentstore | agentstore / raw | agentstore / raw transaction |",
    "| --- | --- | --- | --- | --- | --- |",
  ];
  const spread = (xs: number[]) => `${int(median(xs))} (${int(Math.min(...xs))}–${int(Math.max(...xs))})`;
  for (const { cell, rates } of rows) {
    const r = rates.raw.map((x) => x.rowsPerSecond);
    const t = rates.rawTransaction.map((x) => x.rowsPerSecond);
    const s = rates.store.map((x) => x.rowsPerSecond);
    lines.push(
      `| ${cell.clients} × ${cell.batch} | ${spread(r)} | ${spread(t)} | ${spread(s)} | ` +
        `**${ratio(median(s) / median(r))}** | ${ratio(median(s) / median(t))} |`,
    );
  }
  lines.push(
    "",
    "Where the CPU went during the cells (median percent of one core; the machine has " +
      `${cpus().length} cores, so ${cpus().length * 100}% is all of it): bench / server / postgres / other. ` +
      '"bench" is this process (the pg or gRPC clients); "server" the agentstore process (idle but for its ' +
      "health probe in the raw cells); \"postgres\" the backends of the benchmark's database and the cluster's " +
      'own processes (WAL writer, checkpointer); "other" the rest of the machine, other databases\' backends ' +
      "included (more than noise there disturbs the figures).",
    "",
    `| clients × events per call | ${SIDES.map((side) => THROUGHPUT_SIDES[side]).join(" | ")} |`,
    "| --- | --- | --- | --- |",
  );
  for (const { cell, rates } of rows) {
    const cells = SIDES.map((side) => {
      const c = medianCpu(rates[side].map((x) => x.cpu));
      return `${pct(c.bench)} / ${pct(c.server)} / ${pct(c.postgres)} / ${pct(c.other)}`;
    });
    lines.push(`| ${cell.clients} × ${cell.batch} | ${cells.join(" | ")} |`);
  }
  return lines;
}

/** `items` starting at position `by`, wrapping around. */
function rotate<T>(items: readonly T[], by: number): T[] {
  const at = by % items.length;
  return [...items.slice(at), ...items.slice(0, at)];
}

// ---------------------------------------------------------------------------------------------
// 2. Append latency: one client, one event per call, calls one after another.

interface Quantiles {
  p50: number;
  p99: number;
  max: number;
}
type Timed = Quantiles & { perSecond: number };

async function sequential(calls: number, call: (i: number) => Promise<unknown>): Promise<Timed> {
  // Untimed warm-up: JIT, the connection's first statements, the run's first page.
  for (let i = 0; i < 50; i++) await call(i);
  const samples: number[] = [];
  const started = performance.now();
  for (let i = 50; i < 50 + calls; i++) {
    const t = performance.now();
    await call(i);
    samples.push(performance.now() - t);
  }
  return { ...quantiles(samples), perSecond: calls / ((performance.now() - started) / 1000) };
}

const LATENCY_PATHS = {
  store: "agentstore `AppendRunEvents` (gRPC)",
  rawTransaction: "raw pg `begin; insert; select pg_notify(…); commit`",
  rawInsert: "raw pg autocommit `insert` (no transaction block, no notify; for reference)",
} as const;
type LatencyPath = keyof typeof LATENCY_PATHS;

async function latencySection(ctx: Context): Promise<Record<LatencyPath, Timed[]>> {
  const client = openClient(ctx.serverA.url);
  const conn = await connect(ctx.databaseUrl);
  const one = batchOf(1);
  const results: Record<LatencyPath, Timed[]> = { store: [], rawTransaction: [], rawInsert: [] };
  const paths = Object.keys(LATENCY_PATHS) as LatencyPath[];
  for (let rep = 0; rep < REPS; rep++) {
    // Rotated per repetition, as in the throughput cells.
    for (const path of rotate(paths, rep)) {
      await ctx.tables.fresh();
      let timed: Timed;
      if (path === "store") {
        const runId = await newRun(client);
        timed = await sequential(LATENCY_CALLS, () =>
          client.runs.appendRunEvents({ runId, events: one.events }),
        );
      } else {
        const runId = randomUUID();
        timed =
          path === "rawTransaction"
            ? await sequential(LATENCY_CALLS, (i) => rawAppendTransaction(conn, runId, i, one))
            : await sequential(LATENCY_CALLS, (i) =>
                conn.query(RAW_INSERT, [TENANT, runId, i, one.types, one.payloads]),
              );
      }
      results[path].push(timed);
    }
    progress(
      `latency rep ${rep + 1}/${REPS}: agentstore p50 ${ms(results.store.at(-1)?.p50 ?? Number.NaN)} ms, ` +
        `raw transaction p50 ${ms(results.rawTransaction.at(-1)?.p50 ?? Number.NaN)} ms`,
    );
  }
  closeClient(client);
  await disconnect(conn);
  return results;
}

function latencyMarkdown(results: Record<LatencyPath, Timed[]>): string[] {
  const lines = [
    "## 2. Append latency",
    "",
    `One client, one event (~${PAYLOAD_BYTES} JSON bytes) per call, ${LATENCY_CALLS} calls one after another ` +
      `after 50 untimed ones; median over ${REPS} repetitions of each repetition's percentiles.`,
    "",
    "| path | p50 ms | p99 ms | max ms | calls/s |",
    "| --- | --- | --- | --- | --- |",
  ];
  for (const path of Object.keys(LATENCY_PATHS) as LatencyPath[]) {
    const reps = results[path];
    lines.push(
      `| ${LATENCY_PATHS[path]} | ${ms(median(reps.map((r) => r.p50)))} | ${ms(median(reps.map((r) => r.p99)))} | ` +
        `${ms(median(reps.map((r) => r.max)))} | ${int(median(reps.map((r) => r.perSecond)))} |`,
    );
  }
  const p50 = (path: LatencyPath) => median(results[path].map((r) => r.p50));
  lines.push(
    "",
    `p50 ratio agentstore / raw transaction: **${ratio(p50("store") / p50("rawTransaction"))}×** ` +
      `(agentstore / raw autocommit insert: ${ratio(p50("store") / p50("rawInsert"))}×).`,
  );
  return lines;
}

// ---------------------------------------------------------------------------------------------
// 3. Append ack → subscriber.

interface Delivery {
  fromAck: Quantiles;
  fromStart: Quantiles;
}

/**
 * Appends one event at a time and waits until the subscriber holds it before the next, so each
 * sample is one delivery and not a queue. `fromAck` can be negative: the subscriber may hold the
 * event before the append's own response has arrived.
 */
async function deliveries(append: () => Promise<number>, arrivals: Arrivals, broken: Promise<never>) {
  const fromAck: number[] = [];
  const fromStart: number[] = [];
  for (let i = 0; i < 20 + STREAM_EVENTS; i++) {
    const started = performance.now();
    const seq = await append();
    const acked = performance.now();
    const held = await Promise.race([arrivals.when(seq), broken]);
    if (i < 20) continue; // warm-up
    fromAck.push(held - acked);
    fromStart.push(held - started);
  }
  return { fromAck: quantiles(fromAck), fromStart: quantiles(fromStart) };
}

const TERMINAL_EVENT_TYPE = "terminal_status";

async function storeDelivery(writer: AgentStoreClient, subscriber: AgentStoreClient): Promise<Delivery> {
  const runId = await newRun(writer);
  const arrivals = new Arrivals();
  const following = (async () => {
    for await (const { event } of subscriber.runs.streamRunEvents({ runId })) {
      if (event !== undefined && event.type !== TERMINAL_EVENT_TYPE) arrivals.mark(Number(event.seq));
    }
  })();
  const broken = following.then(() => {
    throw new Error("the stream ended before its run did");
  });
  broken.catch(() => {});
  const { events } = batchOf(1);
  const result = await deliveries(
    async () => Number((await writer.runs.appendRunEvents({ runId, events })).lastSeq),
    arrivals,
    broken,
  );
  await writer.runs.finishRun({ runId, status: RunStatus.COMPLETED });
  await following;
  return result;
}

/**
 * Raw floor: the notifier commits `begin; insert; pg_notify; commit`, the listener holds the
 * notification; with `readRow` it then SELECTs the new rows, as the server's hub does.
 */
async function rawDelivery(databaseUrl: string, readRow: boolean): Promise<Delivery> {
  const notifier = await connect(databaseUrl);
  const listener = await connect(databaseUrl);
  const runId = randomUUID();
  const arrivals = new Arrivals();
  let readUpTo = 0;
  let fail: (err: Error) => void = () => {};
  const broken = new Promise<never>((_, reject) => {
    fail = reject;
  });
  broken.catch(() => {});
  listener.on("notification", (msg) => {
    if (msg.channel !== RAW_CHANNEL) return;
    const [, , key, seq] = JSON.parse(msg.payload ?? "[]") as [string, string, string, number];
    if (key !== runId) return;
    if (!readRow) {
      arrivals.mark(seq);
      return;
    }
    listener.query<{ seq: string }>(RAW_READ, [TENANT, runId, readUpTo]).then(({ rows }) => {
      for (const row of rows) {
        readUpTo = Math.max(readUpTo, Number(row.seq));
        arrivals.mark(Number(row.seq));
      }
    }, fail);
  });
  await listener.query(`listen ${RAW_CHANNEL}`);
  const one = batchOf(1);
  let seq = 0;
  const result = await deliveries(
    async () => {
      await rawAppendTransaction(notifier, runId, seq, one);
      return ++seq;
    },
    arrivals,
    broken,
  );
  await disconnect(notifier);
  await disconnect(listener);
  return result;
}

const DELIVERY_PATHS = {
  sameReplica: "agentstore, same replica (append and `StreamRunEvents` on server A)",
  crossReplica: "agentstore, across replicas (append on A, `StreamRunEvents` on B, same database)",
  rawNotify: "raw pg LISTEN/NOTIFY: listener holds the notification",
  rawNotifyRead: "raw pg LISTEN/NOTIFY, then the listener SELECTs the new row",
} as const;
type DeliveryPath = keyof typeof DELIVERY_PATHS;

async function streamSection(ctx: Context): Promise<Record<DeliveryPath, Delivery[]>> {
  // A second replica only for this section, so that it does not take CPU from the others.
  const serverB = await startServer("server B", ctx.databaseUrl);
  const writer = openClient(ctx.serverA.url);
  const onA = openClient(ctx.serverA.url);
  const onB = openClient(serverB.url);
  const results: Record<DeliveryPath, Delivery[]> = {
    sameReplica: [],
    crossReplica: [],
    rawNotify: [],
    rawNotifyRead: [],
  };
  const paths = Object.keys(DELIVERY_PATHS) as DeliveryPath[];
  for (let rep = 0; rep < REPS; rep++) {
    for (const path of rotate(paths, rep)) {
      await ctx.tables.fresh();
      const delivery =
        path === "sameReplica"
          ? await storeDelivery(writer, onA)
          : path === "crossReplica"
            ? await storeDelivery(writer, onB)
            : await rawDelivery(ctx.databaseUrl, path === "rawNotifyRead");
      results[path].push(delivery);
    }
    const p50 = (path: DeliveryPath) => ms(results[path].at(-1)?.fromAck.p50 ?? Number.NaN);
    progress(
      `stream rep ${rep + 1}/${REPS}: ack→held p50 same replica ${p50("sameReplica")} ms, across ${p50("crossReplica")} ms, raw ${p50("rawNotify")} ms`,
    );
  }
  for (const client of [writer, onA, onB]) closeClient(client);
  ctx.warnings.push(...serverB.warnings.map((w) => `[server B] ${w}`));
  await serverB.stop();
  return results;
}

function streamMarkdown(results: Record<DeliveryPath, Delivery[]>): string[] {
  const lines = [
    "## 3. Append ack → subscriber",
    "",
    `One subscriber, ${STREAM_EVENTS} appends of one event (after 20 untimed), each waiting until the ` +
      'subscriber holds the event before the next. "ack": the append call\'s response has arrived; ' +
      '"start": the append call began. Median over ' +
      `${REPS} repetitions of each repetition's percentiles. Negative means the subscriber held the event before the writer held the ack.`,
    "",
    "| path | ack → held p50 ms | ack → held p99 ms | start → held p50 ms | start → held p99 ms |",
    "| --- | --- | --- | --- | --- |",
  ];
  const q = (path: DeliveryPath, from: "fromAck" | "fromStart", p: "p50" | "p99") =>
    median(results[path].map((d) => d[from][p]));
  for (const path of Object.keys(DELIVERY_PATHS) as DeliveryPath[]) {
    lines.push(
      `| ${DELIVERY_PATHS[path]} | ${ms(q(path, "fromAck", "p50"))} | ${ms(q(path, "fromAck", "p99"))} | ` +
        `${ms(q(path, "fromStart", "p50"))} | ${ms(q(path, "fromStart", "p99"))} |`,
    );
  }
  const vs = (path: DeliveryPath, raw: DeliveryPath, from: "fromAck" | "fromStart") =>
    ratio(q(path, from, "p50") / q(raw, from, "p50"));
  lines.push(
    "",
    "p50 ratios, agentstore / raw pg notify + SELECT: same replica " +
      `${vs("sameReplica", "rawNotifyRead", "fromAck")}× from ack, ${vs("sameReplica", "rawNotifyRead", "fromStart")}× from start; ` +
      `across replicas ${vs("crossReplica", "rawNotifyRead", "fromAck")}× from ack, ${vs("crossReplica", "rawNotifyRead", "fromStart")}× from start.`,
  );
  return lines;
}

// ---------------------------------------------------------------------------------------------
// 4. Fan-out: many subscribers of one run, a paced writer.

interface Fanout {
  events: number;
  achievedRate: number;
  lost: number;
  outOfOrder: number;
  streamErrors: number;
  firstError: string;
  lagFromAck: Quantiles;
  maxLagFromStart: number;
  /** The writer's AppendRunEvents calls, while the server fans out. */
  append: Quantiles;
  /** This process's event-loop delay while writing: high means the harness, not the server, lagged. */
  loopDelayP99: number;
  /** Events held by subscribers per second, from the first paced append until all held the last. */
  deliveriesPerSecond: number;
  /** The server's CPU time per event held by one subscriber. */
  serverUsPerDelivery: number;
  rssBefore: number;
  rssAfter: number;
  cpu: CpuShare;
}

/** Resolves true when `promise` settles in time, false after `ms`. */
async function within(promise: Promise<unknown>, timeoutMs: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((done) => {
    timer = setTimeout(() => done(false), timeoutMs);
  });
  const settled = promise.then(
    () => true,
    () => true,
  );
  const result = await Promise.race([settled, timeout]);
  clearTimeout(timer);
  return result;
}

async function fanoutOnce(ctx: Context): Promise<Fanout> {
  const server = ctx.serverA;
  const writer = openClient(server.url);
  const connections = Array.from({ length: CONNECTIONS }, () => openClient(server.url));
  const runId = await newRun(writer);
  const paced = Math.max(1, Math.round(FANOUT_RATE * FANOUT_SECONDS));
  // Seq 1 is a warm-up event: once every subscriber holds it, every stream is open and live.
  const lastSeq = paced + 1;
  const delivered = new Int32Array(lastSeq + 1);
  const lastHeld = new Float64Array(lastSeq + 1);
  const started = new Float64Array(lastSeq + 1);
  const acked = new Float64Array(lastSeq + 1);
  const live = Promise.withResolvers<void>();
  const complete = Promise.withResolvers<void>();
  const abort = new AbortController();
  let received = 0;
  let outOfOrder = 0;
  let streamErrors = 0;
  let firstError = "";
  const rssBefore = rssMiB(server.pid);

  const subscribers = Array.from({ length: SUBSCRIBERS }, async (_, i) => {
    const client = connections[i % CONNECTIONS];
    if (client === undefined) return;
    let last = 0;
    try {
      for await (const { event } of client.runs.streamRunEvents({ runId }, { signal: abort.signal })) {
        if (event === undefined) continue;
        if (event.type === TERMINAL_EVENT_TYPE) return;
        const now = performance.now();
        const seq = Number(event.seq);
        if (seq !== last + 1) outOfOrder++;
        if (seq <= last || seq > lastSeq) continue;
        last = seq;
        received++;
        const holders = (delivered[seq] ?? 0) + 1;
        delivered[seq] = holders;
        if (now > (lastHeld[seq] ?? 0)) lastHeld[seq] = now;
        if (holders === SUBSCRIBERS && seq === 1) live.resolve();
        if (holders === SUBSCRIBERS && seq === lastSeq) complete.resolve();
      }
    } catch (err) {
      if (abort.signal.aborted) return;
      streamErrors++;
      firstError ||= err instanceof Error ? err.message : String(err);
    }
  });

  const { events } = batchOf(1);
  await writer.runs.appendRunEvents({ runId, events });
  if (!(await within(live.promise, 60_000))) {
    ctx.oddities.push(`fan-out: only ${delivered[1]} of ${SUBSCRIBERS} subscribers were live after 60 s`);
  }
  const meter = await cpuMeter();
  const loopDelay = monitorEventLoopDelay({ resolution: 5 });
  loopDelay.enable();
  const appendMs: number[] = [];
  const intervalMs = 1000 / FANOUT_RATE;
  const t0 = performance.now();
  for (let k = 0; k < paced; k++) {
    // Paced against the schedule, not the previous call, so a slow call does not lower the rate.
    const wait = t0 + k * intervalMs - performance.now();
    if (wait > 0) await sleep(wait);
    const start = performance.now();
    const seq = Number((await writer.runs.appendRunEvents({ runId, events })).lastSeq);
    acked[seq] = performance.now();
    started[seq] = start;
    appendMs.push((acked[seq] ?? start) - start);
  }
  loopDelay.disable();
  const achievedRate = paced / ((performance.now() - t0) / 1000);
  // Generous: a lagging server is the finding, and "lost" can only be told once it caught up.
  if (!(await within(complete.promise, 120_000))) {
    ctx.oddities.push(
      `fan-out: ${delivered[lastSeq]} of ${SUBSCRIBERS} subscribers held the last event 120 s after it was acknowledged`,
    );
  }
  const windowSeconds = (performance.now() - t0) / 1000;
  const deliveries = received - (delivered[1] ?? 0);
  const cpu = await meter();
  const rssAfter = rssMiB(server.pid);
  await writer.runs.finishRun({ runId, status: RunStatus.COMPLETED });
  if (!(await within(Promise.all(subscribers), 30_000))) {
    ctx.oddities.push("fan-out: some streams did not end within 30 s of the terminal event; aborted them");
    abort.abort();
    await Promise.all(subscribers);
  }
  for (const client of [writer, ...connections]) closeClient(client);

  const fromAck: number[] = [];
  let maxLagFromStart = Number.NEGATIVE_INFINITY;
  for (let seq = 2; seq <= lastSeq; seq++) {
    if (delivered[seq] !== SUBSCRIBERS) continue;
    const held = lastHeld[seq] ?? Number.NaN;
    fromAck.push(held - (acked[seq] ?? Number.NaN));
    maxLagFromStart = Math.max(maxLagFromStart, held - (started[seq] ?? Number.NaN));
  }
  return {
    events: paced,
    achievedRate,
    lost: SUBSCRIBERS * lastSeq - received,
    outOfOrder,
    streamErrors,
    firstError,
    lagFromAck: quantiles(fromAck),
    maxLagFromStart,
    append: quantiles(appendMs),
    loopDelayP99: loopDelay.percentile(99) / 1e6,
    deliveriesPerSecond: deliveries / windowSeconds,
    serverUsPerDelivery: ((cpu.server / 100) * windowSeconds * 1e6) / deliveries,
    rssBefore,
    rssAfter,
    cpu,
  };
}

async function fanoutSection(ctx: Context): Promise<Fanout[]> {
  const reps: Fanout[] = [];
  for (let rep = 0; rep < REPS; rep++) {
    await ctx.tables.fresh();
    const result = await fanoutOnce(ctx);
    reps.push(result);
    progress(
      `fan-out rep ${rep + 1}/${REPS}: lost ${result.lost}, max lag ${ms(result.lagFromAck.max)} ms, server RSS ${int(result.rssAfter)} MiB`,
    );
  }
  return reps;
}

function fanoutMarkdown(reps: readonly Fanout[]): string[] {
  // Lags here run from milliseconds to tens of seconds: whole milliseconds are enough past 100.
  const lag = (v: number) => (Math.abs(v) >= 100 ? int(v) : ms(v));
  const m = (pick: (r: Fanout) => number) => median(reps.map(pick));
  const rows = [...reps.map((r, i) => ({ label: String(i + 1), r })), { label: "median", r: undefined }];
  const lines = [
    "## 4. Fan-out",
    "",
    `${int(SUBSCRIBERS)} subscribers (\`StreamRunEvents\`) of one run on server A, spread over ${CONNECTIONS} ` +
      "client connections (one `createClient`, so one HTTP/2 session, each); a writer on its own connection " +
      `appends one event at a time, paced at ${FANOUT_RATE} events/s for ${FANOUT_SECONDS} s. "lost": events some ` +
      'subscriber never held (every subscriber must hold every event); "lag": from the append\'s ack to the moment ' +
      "the last subscriber holds the event. All subscribers live in this one process.",
    "",
    "| rep | events (achieved rate/s) | lost | out of order | stream errors | lag p50 / p99 / max ms | max lag from call start ms |",
    "| --- | --- | --- | --- | --- | --- | --- |",
  ];
  for (const { label, r } of rows) {
    const v = (pick: (r: Fanout) => number) => (r === undefined ? m(pick) : pick(r));
    const error = r === undefined || r.firstError === "" ? "" : ` (${r.firstError.replaceAll("|", "/")})`;
    lines.push(
      `| ${label} | ${int(v((x) => x.events))} (${v((x) => x.achievedRate).toFixed(1)}) | ${int(v((x) => x.lost))} | ` +
        `${int(v((x) => x.outOfOrder))} | ${int(v((x) => x.streamErrors))}${error} | ` +
        `${lag(v((x) => x.lagFromAck.p50))} / ${lag(v((x) => x.lagFromAck.p99))} / ${lag(v((x) => x.lagFromAck.max))} | ` +
        `${lag(v((x) => x.maxLagFromStart))} |`,
    );
  }
  lines.push(
    "",
    `Events lost over all repetitions: **${int(reps.reduce((sum, r) => sum + r.lost, 0))}**.`,
    "",
    "Where the time went: the writer's own `AppendRunEvents` calls while the server fans out; this " +
      "process's event-loop delay (high would mean the harness, not the server, held events back); events " +
      "held per second summed over subscribers, and the server's CPU per event held, from the first paced " +
      "append until every subscriber held the last; server RSS (`/proc/<pid>/status`) before the subscribers " +
      "connect and once every subscriber held the last event (streams still open); CPU bench / server / postgres / other.",
    "",
    "| rep | append call p50 / p99 ms | bench event-loop delay p99 ms | deliveries/s | server CPU µs per delivery | server RSS before → after MiB | CPU |",
    "| --- | --- | --- | --- | --- | --- | --- |",
  );
  for (const { label, r } of rows) {
    const v = (pick: (r: Fanout) => number) => (r === undefined ? m(pick) : pick(r));
    lines.push(
      `| ${label} | ${ms(v((x) => x.append.p50))} / ${ms(v((x) => x.append.p99))} | ${ms(v((x) => x.loopDelayP99))} | ` +
        `${int(v((x) => x.deliveriesPerSecond))} | ${ms(v((x) => x.serverUsPerDelivery))} | ` +
        `${int(v((x) => x.rssBefore))} → ${int(v((x) => x.rssAfter))} | ${pct(v((x) => x.cpu.bench))} / ` +
        `${pct(v((x) => x.cpu.server))} / ${pct(v((x) => x.cpu.postgres))} / ${pct(v((x) => x.cpu.other))} |`,
    );
  }
  return lines;
}

// ---------------------------------------------------------------------------------------------
// 5. The run.

interface Context {
  databaseUrl: string;
  serverA: Server;
  tables: Tables;
  /** Anything that makes a figure suspect, listed at the end of the report. */
  oddities: string[];
  warnings: string[];
}

/** Where `node src/main.ts` runs, and what code that is. */
let serverDir = ROOT;
let serverCode = "";

function describeWorkingTree(): string {
  try {
    const git = (...argv: string[]) =>
      execFileSync("git", ["-C", ROOT, ...argv], {
        encoding: "utf8",
        stdio: ["ignore", "pipe", "ignore"],
      }).trim();
    const commit = git("rev-parse", "--short", "HEAD");
    const dirty = git("status", "--porcelain", "--", "src", "gen") !== "";
    return `the working tree at commit \`${commit}\`${dirty ? ", with uncommitted changes in src/ or gen/" : ""}`;
  } catch {
    return "the working tree (not a git checkout)";
  }
}

/**
 * Serves a clean export of one commit: a working tree being edited during a run of several
 * minutes could otherwise hand server B other code than server A, or none that starts.
 */
function exportServer(ref: string): void {
  const sha = execFileSync("git", ["-C", ROOT, "rev-parse", "--verify", `${ref}^{commit}`], {
    encoding: "utf8",
  }).trim();
  const dir = mkdtempSync(join(tmpdir(), "agentstore-server-"));
  removeExport = () => rmSync(dir, { recursive: true, force: true });
  execFileSync("sh", ["-c", 'git -C "$0" archive "$1" | tar -x -C "$2"', ROOT, sha, dir]);
  symlinkSync(join(ROOT, "node_modules"), join(dir, "node_modules"));
  serverDir = dir;
  serverCode = `a clean \`git archive\` export of commit \`${sha.slice(0, 7)}\` (\`--server-ref ${ref}\`)`;
}

function commandLine(): string {
  const argv = process.argv.slice(2).map((a) => (/^[\w./:=,@-]+$/.test(a) ? a : `'${a}'`));
  if (process.env.npm_lifecycle_event === "bench:write-path") {
    return `npm run bench:write-path${argv.length > 0 ? ` -- ${argv.join(" ")}` : ""}`;
  }
  return ["node bench/write-path.ts", ...argv].join(" ");
}

async function main(): Promise<void> {
  const admin = await connect(ADMIN_URL);
  const setting = async (name: string) =>
    (await admin.query<{ v: string }>("select current_setting($1) as v", [name])).rows[0]?.v ?? "?";
  const pgVersion = (await admin.query<{ v: string }>("select version() as v")).rows[0]?.v ?? "?";
  const pgSettings = `synchronous_commit=${await setting("synchronous_commit")}, fsync=${await setting("fsync")}, shared_buffers=${await setting("shared_buffers")}`;
  await admin.query(`drop database if exists ${DATABASE} with (force)`);
  await admin.query(`create database ${DATABASE}`);
  await disconnect(admin);
  dropDatabase = async () => {
    const conn = await connect(ADMIN_URL);
    await conn.query(`drop database if exists ${DATABASE} with (force)`);
    await disconnect(conn);
  };
  const url = new URL(ADMIN_URL);
  url.pathname = `/${DATABASE}`;
  const databaseUrl = url.toString();

  if (args["server-ref"] !== undefined) exportServer(args["server-ref"]);
  progress(`starting server A (node src/main.ts in ${serverDir})`);
  const serverA = await startServer("server A", databaseUrl);
  const setup = await connect(databaseUrl);
  monitor = await connect(databaseUrl);
  const ctx: Context = {
    databaseUrl,
    serverA,
    tables: await prepareTables(setup),
    oddities: [],
    warnings: [],
  };

  const body: string[] = [];
  const load: string[] = [];
  // Each section under one CPU meter: "other" shows whether the machine was ours alone.
  async function section<T>(name: Section, run: () => Promise<T>, render: (result: T) => string[]) {
    if (!wanted(name)) return;
    const meter = await cpuMeter();
    const started = performance.now();
    const result = await run();
    const cpu = await meter();
    body.push(...render(result), "");
    load.push(
      `| ${name} | ${((performance.now() - started) / 1000).toFixed(0)} | ${pct(cpu.bench)} | ${pct(cpu.server)} | ` +
        `${pct(cpu.postgres)} | ${pct(cpu.other)} |`,
    );
    if (cpu.other > 25) {
      ctx.oddities.push(
        `other processes used ${pct(cpu.other)} of a core during the ${name} section: its figures are disturbed`,
      );
    }
  }
  await section("throughput", () => throughputSection(ctx), throughputMarkdown);
  await section("latency", () => latencySection(ctx), latencyMarkdown);
  await section("stream", () => streamSection(ctx), streamMarkdown);
  await section("fanout", () => fanoutSection(ctx), fanoutMarkdown);
  const serverRss = rssMiB(serverA.pid);
  ctx.warnings.unshift(...serverA.warnings.map((w) => `[server A] ${w}`));

  const cpu = cpus();
  const header = [
    "# Write path: agentstore beside raw pg (issue #8)",
    "",
    `Measured ${new Date().toISOString().replace("T", " ").slice(0, 16)} UTC; the run took ${(performance.now() / 60_000).toFixed(1)} min.`,
    "",
    `- Machine: ${cpu.length} cores (${cpu[0]?.model.trim() ?? "unknown CPU"}), ${(totalmem() / 2 ** 30).toFixed(1)} GiB memory`,
    `- PostgreSQL: ${pgVersion} at ${url.host} (${pgSettings})`,
    `- Node: ${process.version}; server: \`node src/main.ts\` from ${serverCode || describeWorkingTree()}; client: \`src/client\` of the working tree`,
    `- Command: \`${commandLine()}\``,
    `- Payload: JSON objects of ~${PAYLOAD_BYTES} bytes, type \`${EVENT_TYPE}\`; raw pg writes to ${ctx.tables.rawShape}, ` +
      "in schema `raw_pg` of the server's own database.",
    `- Every side of every repetition starts on emptied tables (TRUNCATE) after a CHECKPOINT; server A's RSS at the end: ${int(serverRss)} MiB.`,
    "",
  ];
  const notes = [
    "## Machine load per section",
    "",
    "CPU in percent of one core over each whole section (set-up included); agentstore counts every server process.",
    "",
    "| section | seconds | bench | agentstore | postgres | other |",
    "| --- | --- | --- | --- | --- | --- |",
    ...load,
    "",
    "## Notes",
    "",
    ...(ctx.oddities.length === 0 ? ["- No acknowledged row was missing and nothing timed out."] : []),
    ...ctx.oddities.map((o) => `- ${o}`),
    ctx.warnings.length === 0
      ? "- The servers logged no warning or error."
      : `- The servers logged ${ctx.warnings.length} warnings or errors; the first: \`${ctx.warnings[0]?.slice(0, 300)}\``,
    "",
  ];
  const text = [...header, ...body, ...notes].join("\n");
  console.log(`\n${text}`);
  mkdirSync(dirname(OUT), { recursive: true });
  writeFileSync(OUT, text);
  progress(`wrote ${OUT}`);
}

try {
  await main();
} catch (err) {
  // After Ctrl-C the clean-up aborts calls in flight; their errors are no news.
  if (cleaning === undefined) console.error(err);
  process.exitCode = 1;
} finally {
  await cleanUp();
}
// Nothing should be left running; exit anyway rather than hang on a stray handle.
process.exit();
