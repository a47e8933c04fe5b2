/**
 * Push delivery benchmark (AGENTSTORE_PUSH_DELIVERY): what durable delivery costs a task update's
 * write, how many deliveries per second a server POSTs, and how soon a webhook holds an update
 * after its PublishTaskUpdate was sent. The server runs as its own process (`node src/main.ts`) on a
 * throwaway database, the clients and the webhook (a node:http server answering 200) in this one.
 *
 *   npm run bench:push                         # both databases, ~1 min on 2 cores
 *   npm run bench:push -- --db postgres --updates 4000 --samples 300
 *
 * Per database:
 * 1. Delivery off: `--tasks` tasks with a push config each, then `--updates` PublishTaskUpdate
 *    calls of one status update, `--clients` clients at once, each on its own tasks: the write
 *    rate without deliveries (the webhook must receive nothing).
 * 2. Delivery on (another server, another database): the same writes, each now also writing a
 *    delivery row; then the time until the webhook holds every update: deliveries per second from
 *    the first write to the last arrival, and whether every (task, seq) arrived exactly once and in
 *    seq order per task.
 * 3. Latency, one sample at a time, `--samples` after 20 of warm-up: PublishTaskUpdate sent → the
 *    webhook holds the update.
 *
 * Prints Markdown and writes it to bench/results/push.md (see --out).
 */
import { mkdirSync, writeFileSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { availableParallelism, cpus, loadavg, totalmem } from "node:os";
import { dirname, isAbsolute, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { parseArgs } from "node:util";
import { type AgentStoreClient, createClient, TaskState } from "../src/client/index.ts";
import { cpuCells, cpuWindow } from "./cpu.ts";
import {
  commandLine,
  databasesOption,
  describe,
  MAX_LOG_LINES,
  positiveOption,
  postgresVersion,
  sh,
  watchServer,
} from "./report.ts";
import {
  type BenchBackend,
  benchDatabase,
  DEFAULT_ADMIN_URL,
  percentile,
  postgresReachable,
  ROOT,
  spawnBenchServer,
} from "./server.ts";

const USAGE = `node bench/push.ts [options]
  --db pglite|postgres|both   databases to measure (both)
  --tasks N      tasks, each with one push config to the webhook (80)
  --updates N    PublishTaskUpdate calls of one update, per phase (2000)
  --clients N    concurrent clients, each on its own HTTP/2 connection and its own tasks (8)
  --samples N    latency samples after 20 of warm-up (200)
  --admin-url URL      PostgreSQL to create the throwaway databases on
  --out FILE     Markdown result file (bench/results/push.md)`;

const { values: args } = parseArgs({
  options: {
    db: { type: "string", default: "both" },
    tasks: { type: "string", default: "80" },
    updates: { type: "string", default: "2000" },
    clients: { type: "string", default: "8" },
    samples: { type: "string", default: "200" },
    "admin-url": { type: "string", default: DEFAULT_ADMIN_URL },
    out: { type: "string", default: "bench/results/push.md" },
    help: { type: "boolean", short: "h", default: false },
  },
});
if (args.help) {
  console.log(USAGE);
  process.exit(0);
}
const positive = positiveOption(USAGE);
const DATABASES = databasesOption(args.db, USAGE);
const TASKS = positive("tasks", args.tasks);
const UPDATES = positive("updates", args.updates);
const CLIENTS = positive("clients", args.clients);
const SAMPLES = positive("samples", args.samples);
const WARMUP = 20;
const ADMIN_URL = args["admin-url"] ?? DEFAULT_ADMIN_URL;
/** How long the delivery phase waits for the last arrivals before it reports what is missing. */
const DRAIN_LIMIT_MS = 120_000;

const int = (n: number) => Math.round(n).toLocaleString("en-US");
const ms = (n: number) => n.toFixed(2);

/** The webhook: arrivals per task (seqs in order) and a waiter per (task, seq). */
class Webhook {
  readonly arrivals = new Map<string, number[]>();
  count = 0;
  #waiters = new Map<string, () => void>();
  #server = http.createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      const path = req.url ?? "";
      const task = path.slice(path.lastIndexOf("/") + 1);
      const seq = Number(req.headers["a2a-notification-seq"]);
      const seen = this.arrivals.get(task) ?? [];
      seen.push(seq);
      this.arrivals.set(task, seen);
      this.count++;
      this.#waiters.get(`${task}/${seq}`)?.();
      res.writeHead(200).end();
    });
  });
  port = 0;

  async listen(): Promise<this> {
    await new Promise<void>((resolve) => this.#server.listen(0, "127.0.0.1", resolve));
    this.port = (this.#server.address() as AddressInfo).port;
    return this;
  }

  url(task: string) {
    return `http://127.0.0.1:${this.port}/hook/${task}`;
  }

  arrival(task: string, seq: number): Promise<void> {
    return new Promise((resolve) => this.#waiters.set(`${task}/${seq}`, resolve));
  }

  close() {
    this.#server.closeAllConnections();
    return new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}

const update = (i: number) => ({
  update: { case: "statusUpdate" as const, value: { status: { state: TaskState.WORKING, metadata: { i } } } },
});

interface Phase {
  name: string;
  updates: number;
  seconds: number;
  cpu: string;
}

/** `--tasks` tasks with a config each; answers their ids, split by client. */
async function setUp(clients: AgentStoreClient[], hook: Webhook, tag: string): Promise<string[][]> {
  const perClient: string[][] = clients.map(() => []);
  await Promise.all(
    clients.map(async (c, k) => {
      for (let i = k; i < TASKS; i += clients.length) {
        const id = `${tag}-${i}`;
        await c.tasks.saveTask({ task: { id, contextId: id, status: { state: TaskState.SUBMITTED } } });
        await c.tasks.createPushConfig({ config: { taskId: id, url: hook.url(id), token: "t" } });
        perClient[k]?.push(id);
      }
    }),
  );
  return perClient;
}

/** `--updates` single-update PublishTaskUpdate calls, each client round-robin over its tasks. */
async function publishAll(clients: AgentStoreClient[], tasks: string[][]): Promise<void> {
  let next = 0;
  await Promise.all(
    clients.map(async (c, k) => {
      const mine = tasks[k] ?? [];
      for (let j = 0; ; j++) {
        const i = next++;
        if (i >= UPDATES) return;
        await c.tasks.publishTaskUpdate({ taskId: mine[j % mine.length] ?? "", updates: [update(i)] });
      }
    }),
  );
}

async function bench(backend: BenchBackend): Promise<string> {
  const notes: string[] = [];
  const phases: Phase[] = [];
  const latencyRows: string[] = [];
  for (const delivery of [false, true]) {
    const hook = await new Webhook().listen();
    const database = await benchDatabase(backend, `push_${delivery ? "on" : "off"}`, ADMIN_URL);
    const server = await spawnBenchServer({
      ...database.env,
      AGENTSTORE_PUSH_DELIVERY: String(delivery),
      AGENTSTORE_PUSH_ALLOW_PRIVATE_URLS: "true",
    });
    const log = watchServer(server);
    const clients = Array.from({ length: CLIENTS }, () => createClient({ baseUrl: server.url }));
    const first = createClient({ baseUrl: server.url });
    try {
      const tag = delivery ? "on" : "off";
      console.log(`${backend}: delivery ${tag}: setting up ${TASKS} tasks`);
      const tasks = await setUp(clients, hook, tag);
      console.log(`${backend}: delivery ${tag}: ${UPDATES} updates`);
      const end = cpuWindow(server);
      const endAll = cpuWindow(server);
      const began = performance.now();
      await publishAll(clients, tasks);
      const written = (performance.now() - began) / 1000;
      phases.push({
        name: `PublishTaskUpdate (1 status update), ${CLIENTS} clients, ${TASKS} tasks with a push config each, delivery **${tag}**`,
        updates: UPDATES,
        seconds: written,
        cpu: cpuCells(end()),
      });
      if (!delivery) {
        await sleep(1_000);
        if (hook.count > 0) notes.push(`delivery off, yet the webhook received ${hook.count} requests`);
        continue;
      }
      const deadline = Date.now() + DRAIN_LIMIT_MS;
      while (hook.count < UPDATES && Date.now() < deadline) await sleep(5);
      const drained = (performance.now() - began) / 1000;
      phases.push({
        name: `the same updates delivered: first write → the webhook holds all ${int(UPDATES)} (POSTs, 16 at a time; CPU over writes and deliveries)`,
        updates: hook.count,
        seconds: drained,
        cpu: cpuCells(endAll()),
      });
      // Every (task, seq) once, in order: seq 1 was the save before the config, so 2, 3, ...
      let duplicates = 0;
      let outOfOrder = 0;
      let missing = 0;
      for (const ids of tasks) {
        for (const id of ids) {
          const seqs = hook.arrivals.get(id) ?? [];
          const { task } = await first.tasks.getTask({ id, historyLength: 0 });
          const last = Number(task?.updateSeq ?? 0n);
          missing += Math.max(0, last - 1 - new Set(seqs).size);
          duplicates += seqs.length - new Set(seqs).size;
          outOfOrder += seqs.filter((s, i) => i > 0 && s < (seqs[i - 1] ?? 0)).length;
        }
      }
      if (duplicates + outOfOrder + missing > 0) {
        notes.push(`deliveries: ${missing} missing, ${duplicates} duplicated, ${outOfOrder} out of order`);
      }

      console.log(`${backend}: latency`);
      const id = "latency";
      await first.tasks.saveTask({
        task: { id, contextId: id, status: { state: TaskState.SUBMITTED } },
      });
      await first.tasks.createPushConfig({ config: { taskId: id, url: hook.url(id), token: "t" } });
      const samples: number[] = [];
      const endLatency = cpuWindow(server);
      for (let i = 0; i < WARMUP + SAMPLES; i++) {
        const arrived = hook.arrival(id, i + 2);
        const sent = performance.now();
        await first.tasks.publishTaskUpdate({ taskId: id, updates: [update(i)] });
        await arrived;
        if (i >= WARMUP) samples.push(performance.now() - sent);
        await sleep(5);
      }
      const s = samples.sort((a, b) => a - b);
      latencyRows.push(
        `| **PublishTaskUpdate sent → the webhook holds the update** | ${ms(percentile(s, 50))} | ${ms(percentile(s, 90))} | ${ms(percentile(s, 99))} | ${ms(s.at(-1) ?? Number.NaN)} |`,
        "",
        `CPU over the latency samples, percent of one core: server / bench / rest ${cpuCells(endLatency()).replaceAll(" |", " /")}.`,
      );
    } catch (err) {
      notes.push(`delivery ${delivery ? "on" : "off"}: the run stopped: ${describe(err)}`);
    } finally {
      for (const c of [...clients, first]) c.close();
      log.stopping = true;
      await server.stop();
      await database.drop();
      await hook.close();
      if (log.exit !== undefined) notes.push(`the server exited during the run: ${log.exit}`);
      if (log.warnings.length > 0) {
        notes.push(
          `the server logged ${log.warnings.length} warning(s):\n${log.warnings
            .slice(0, MAX_LOG_LINES)
            .map((l) => `  \`${l.slice(0, 600)}\``)
            .join("\n")}`,
        );
      }
    }
  }
  const [off, on] = phases;
  const ratio =
    off !== undefined && on !== undefined
      ? `Write rate with delivery on / off: ${(on.updates / on.seconds / (off.updates / off.seconds)).toFixed(2)}.`
      : "";
  const pgVersion = backend === "postgres" ? await postgresVersion(ADMIN_URL) : "";
  return [
    `## ${backend}`,
    "",
    `Server: \`node src/main.ts\` on ${backend === "pglite" ? "embedded PGlite (a fresh data directory)" : `PostgreSQL (a fresh database; ${pgVersion})`}.`,
    "",
    "| throughput | result | what ran | server CPU | bench CPU | rest CPU |",
    "| --- | --- | --- | --- | --- | --- |",
    ...phases.map(
      (p) =>
        `| ${p.name} | **${int(p.updates / p.seconds)} updates/s** | ${int(p.updates)} in ${p.seconds.toFixed(2)} s | ${p.cpu} |`,
    ),
    "",
    ratio,
    "",
    `| latency, one sample at a time, ${SAMPLES} samples | p50 ms | p90 ms | p99 ms | max ms |`,
    "| --- | --- | --- | --- | --- |",
    ...latencyRows,
    "",
    notes.length === 0
      ? "Checks: with delivery off the webhook received nothing; with it on, every update of every task arrived exactly once, in seq order per task."
      : `Checks: ${notes.length} thing(s) off:\n\n${notes.map((n) => `- ${n}`).join("\n")}`,
    "",
  ].join("\n");
}

const loadAtStart = loadavg();
const started = performance.now();
const sections: string[] = [];
for (const backend of DATABASES) {
  if (backend === "postgres" && !(await postgresReachable(ADMIN_URL))) {
    sections.push(`## postgres\n\nSkipped: PostgreSQL at ${ADMIN_URL} is unreachable.\n`);
    continue;
  }
  try {
    const text = await bench(backend);
    console.log(text);
    sections.push(text);
  } catch (err) {
    sections.push(`## ${backend}\n\nFailed: ${describe(err)}\n`);
  }
}
const header = [
  "# Push delivery (TaskService, AGENTSTORE_PUSH_DELIVERY)",
  "",
  `Measured ${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC; the run took ${((performance.now() - started) / 1000).toFixed(0)} s.`,
  "",
  `- Command: \`${commandLine("push")}\``,
  `- Machine: nproc ${sh("nproc", [])} (${availableParallelism()} available to Node; ${cpus()[0]?.model ?? "?"}), ${(totalmem() / 2 ** 30).toFixed(1)} GiB, Node ${process.version}`,
  `- Load average at start: ${loadAtStart.map((l) => l.toFixed(2)).join(" ")}; at the end: ${loadavg()
    .map((l) => l.toFixed(2))
    .join(" ")}`,
  `- Server: the working tree at commit ${sh("git", ["rev-parse", "--short", "HEAD"])}; the webhook is a node:http server in the benchmark process answering 200 at once; server, clients, webhook and database share the machine's cores`,
  "- CPU columns: percent of one core (the server process, this process with the clients and the webhook, the rest of the machine)",
  "",
].join("\n");
const out = isAbsolute(args.out ?? "") ? (args.out ?? "") : join(ROOT, args.out ?? "bench/results/push.md");
mkdirSync(dirname(out), { recursive: true });
writeFileSync(out, `${header}\n${sections.join("\n")}`);
console.log(`\nwrote ${out}`);
