/**
 * Work-queue benchmark (QueueService): how fast tasks go through enqueue → claim → complete, one
 * per call and in batches, how fast they go in, and how soon a worker waiting in ClaimTasks holds a
 * task just enqueued. The server runs as its own process (`node src/main.ts`, bench/server.ts) on a
 * throwaway database, clients in this one, over gRPC on loopback, each worker on its own HTTP/2
 * connection.
 *
 *   npm run bench:queue                                   # both databases, ~1-3 min on 2 cores
 *   npm run bench:queue -- --db postgres --tasks 5000 --workers 8 --samples 300
 *
 * Per database, in this order (each phase in its own queue):
 * 1. EnqueueTask, one task per call, `--workers` clients at once: `--tasks` tasks (enqueue only;
 *    drained afterwards, unmeasured, so the later phases start with no pending task).
 * 2. EnqueueTasks of `--enqueue-batch` (100), `--workers` clients at once: a backlog of `--tasks`;
 *    then `--workers` workers each loop ClaimTasks(max_tasks 1) + CompleteTask until the queue is
 *    empty.
 * 3. The same batched: EnqueueTasks of 100 builds a backlog of `--batched-tasks`; the workers loop
 *    ClaimTasks(max_tasks `--claim-batch` = 50) + CompleteTasks of what they claimed.
 * 4. Latency: `--workers` workers wait in ClaimTasks(wait 30 s); a producer enqueues one task at a
 *    time with EnqueueTask and waits until a worker holds it before the next (`--samples` samples
 *    after 20 of warm-up, 5 ms apart). Latency = the claim's response arrives − just before the
 *    EnqueueTask call; also from the EnqueueTask response, and the EnqueueTask call itself, beside
 *    the same calls made before any worker waits (in another queue).
 *
 * Every phase checks what it got back (each task claimed once, every completion changed it,
 * GetQueueStats afterwards); whatever was off is listed under "Checks" in the result, and a phase
 * that fails is reported with its error instead of a figure.
 *
 * Prints Markdown and writes it to bench/results/queue.md (see --out).
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { availableParallelism, cpus, loadavg, totalmem } from "node:os";
import { dirname, isAbsolute, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { parseArgs } from "node:util";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { type Client, createClient } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { QueueService } from "../gen/agentstore/v1/queue_service_pb.ts";
import type { QueueTask } from "../gen/agentstore/v1/queue_task_pb.ts";
import { type CpuShare, cpuCells, cpuWindow } from "./cpu.ts";
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
  type BenchServer,
  DEFAULT_ADMIN_URL,
  percentile,
  postgresReachable,
  ROOT,
  startBenchServer,
} from "./server.ts";

const USAGE = `node bench/queue.ts [options]
  --db pglite|postgres|both   databases to measure (both)
  --tasks N            tasks of the one-per-call phases: single EnqueueTask, and the backlog of
                       ClaimTasks(max_tasks 1) + CompleteTask (1000)
  --batched-tasks N    backlog of the batched phase (5000)
  --workers N          concurrent workers / enqueuing clients (8)
  --samples N          enqueue → waiting worker samples, after 20 of warm-up (300)
  --enqueue-batch N    tasks per EnqueueTasks call (100)
  --claim-batch N      max_tasks of the batched ClaimTasks (50)
  --admin-url URL      PostgreSQL to create the throwaway database on ($TEST_POSTGRES_URL or
                       postgres://postgres@127.0.0.1:5432/postgres)
  --out FILE           Markdown result file (bench/results/queue.md)
  --peers              peer queues (graphile-worker, pg-boss) beside agentstore: not yet, a later
                       issue; the flag only says so`;

const { values: args } = parseArgs({
  options: {
    db: { type: "string", default: "both" },
    tasks: { type: "string", default: "1000" },
    "batched-tasks": { type: "string", default: "5000" },
    workers: { type: "string", default: "8" },
    samples: { type: "string", default: "300" },
    "enqueue-batch": { type: "string", default: "100" },
    "claim-batch": { type: "string", default: "50" },
    "admin-url": { type: "string", default: DEFAULT_ADMIN_URL },
    out: { type: "string", default: "bench/results/queue.md" },
    peers: { type: "boolean", default: false },
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
const BATCHED_TASKS = positive("batched-tasks", args["batched-tasks"]);
const WORKERS = positive("workers", args.workers);
const SAMPLES = positive("samples", args.samples);
const ENQUEUE_BATCH = Math.min(1000, positive("enqueue-batch", args["enqueue-batch"]));
const CLAIM_BATCH = Math.min(100, positive("claim-batch", args["claim-batch"]));
const ADMIN_URL = args["admin-url"] ?? DEFAULT_ADMIN_URL;
const WARMUP = 20;
/** Longer than any phase takes, so that no lease runs out and no task is claimed twice. */
const LEASE = durationFromMs(600_000);
const CLAIM_WAIT = durationFromMs(30_000);
/** How long the latency producer waits for a claim before it calls the sample lost. */
const CLAIM_DEADLINE_MS = 35_000;

type QueueClient = Client<typeof QueueService>;

interface Connection {
  queue: QueueClient;
  close(): void;
}

/** A QueueService client on its own HTTP/2 connection, over gRPC as the agentstore client does. */
function connect(baseUrl: string): Connection {
  const sessionManager = new Http2SessionManager(baseUrl, { pingIntervalMs: 15_000 });
  const transport = createGrpcTransport({ baseUrl, sessionManager });
  return { queue: createClient(QueueService, transport), close: () => sessionManager.abort() };
}

const int = (n: number) => Math.round(n).toLocaleString("en-US");
const ms = (n: number) => n.toFixed(2);

/** What a measured phase did: how many tasks, how long, and where the CPU went meanwhile. */
interface Timed extends CpuShare {
  tasks: number;
  calls: number;
  seconds: number;
}

async function timed(server: BenchServer, body: () => Promise<{ tasks: number; calls: number }>) {
  const end = cpuWindow(server);
  const { tasks, calls } = await body();
  return { tasks, calls, ...end() } satisfies Timed;
}

const payload = (phase: string, i: number) => ({ phase, i, note: "queue benchmark task" });

/** Where this database's run noted what was off. */
class Checks {
  readonly notes: string[] = [];
  note(text: string) {
    this.notes.push(text);
    console.log(`  ! ${text}`);
  }
}

/** `total` tasks into `queue` by single EnqueueTask calls, the clients at once. */
async function enqueueSingly(clients: Connection[], queue: string, total: number, checks: Checks) {
  let next = 0;
  let notCreated = 0;
  await Promise.all(
    clients.map(async (c) => {
      while (next < total) {
        const i = next++;
        const { task, created } = await c.queue.enqueueTask({ task: { queue, payload: payload(queue, i) } });
        if (!created || task === undefined) notCreated++;
      }
    }),
  );
  if (notCreated > 0)
    checks.note(`${queue}: ${notCreated} EnqueueTask answers had created = false or no task`);
  return { tasks: total, calls: total };
}

/** `total` tasks into `queue` by EnqueueTasks of ENQUEUE_BATCH, the clients at once. */
async function enqueueBatched(clients: Connection[], queue: string, total: number, checks: Checks) {
  let next = 0;
  let calls = 0;
  let wrong = 0;
  await Promise.all(
    clients.map(async (c) => {
      while (next < total) {
        const first = next;
        const n = Math.min(ENQUEUE_BATCH, total - first);
        next += n;
        const res = await c.queue.enqueueTasks({
          tasks: Array.from({ length: n }, (_, k) => ({ queue, payload: payload(queue, first + k) })),
        });
        calls++;
        if (res.tasks.length !== n || res.created.length !== n || res.created.some((x) => !x)) wrong++;
      }
    }),
  );
  if (wrong > 0) checks.note(`${queue}: ${wrong} EnqueueTasks answers did not return every task as created`);
  return { tasks: total, calls };
}

/**
 * The workers drain `queue`: ClaimTasks(max_tasks `batch`) without waiting, then CompleteTask per
 * task (batch 1) or CompleteTasks of all of them, until a claim answers no task.
 */
async function drain(clients: Connection[], queue: string, batch: number, expected: number, checks: Checks) {
  const seen = new Set<string>();
  let duplicates = 0;
  let oversized = 0;
  let unchanged = 0;
  let calls = 0;
  await Promise.all(
    clients.map(async (c, w) => {
      const workerId = `${queue}-worker-${w}`;
      for (;;) {
        const { tasks } = await c.queue.claimTasks({ workerId, queue, maxTasks: batch, lease: LEASE });
        calls++;
        if (tasks.length === 0) return;
        if (tasks.length > batch) oversized++;
        for (const t of tasks) {
          if (seen.has(t.taskId)) duplicates++;
          seen.add(t.taskId);
        }
        if (batch === 1) {
          for (const t of tasks) {
            const { changed } = await c.queue.completeTask({ taskId: t.taskId, workerId });
            calls++;
            if (!changed) unchanged++;
          }
        } else {
          const { changed } = await c.queue.completeTasks({
            workerId,
            completions: tasks.map((t) => ({ taskId: t.taskId })),
          });
          calls++;
          unchanged += changed.filter((x) => !x).length + Math.max(0, tasks.length - changed.length);
        }
      }
    }),
  );
  if (duplicates > 0) checks.note(`${queue}: ${duplicates} tasks were claimed more than once`);
  if (oversized > 0) checks.note(`${queue}: ${oversized} ClaimTasks answers held more than max_tasks`);
  if (unchanged > 0) checks.note(`${queue}: ${unchanged} completions answered changed = false`);
  if (seen.size !== expected)
    checks.note(`${queue}: ${seen.size} distinct tasks claimed, ${expected} enqueued`);
  return { tasks: seen.size, calls };
}

/** Whether GetQueueStats says every task of the queue is COMPLETED. */
async function checkStats(client: Connection, queue: string, expected: number, checks: Checks) {
  const { stats } = await client.queue.getQueueStats({ queue });
  const byState = Object.entries(stats?.byState ?? {})
    .map(([state, n]) => `${state} ${n}`)
    .join(", ");
  if (stats?.total !== BigInt(expected) || stats.byState.COMPLETED !== BigInt(expected)) {
    checks.note(
      `${queue}: GetQueueStats after the drain: total ${stats?.total}, by state {${byState}}; expected ${expected} COMPLETED`,
    );
  }
}

interface LatencyResult {
  fromStart: number[];
  fromAck: number[];
  /** The producer's EnqueueTask calls themselves. */
  enqueue: number[];
  emptyWaits: number;
}

/** Workers wait in ClaimTasks; the producer enqueues one task at a time and times its claim. */
async function enqueueToClaim(
  workers: Connection[],
  producer: Connection,
  checks: Checks,
): Promise<LatencyResult> {
  const queue = "latency";
  const controller = new AbortController();
  const arrivals = new Map<number, (at: number) => void>();
  let emptyWaits = 0;
  let duplicates = 0;
  const seen = new Set<string>();
  let workerError: unknown;
  const loops = workers.map(async (c, w) => {
    const workerId = `latency-worker-${w}`;
    while (!controller.signal.aborted) {
      let tasks: QueueTask[];
      try {
        ({ tasks } = await c.queue.claimTasks(
          { workerId, queue, maxTasks: 1, lease: LEASE, wait: CLAIM_WAIT },
          { signal: controller.signal },
        ));
      } catch (err) {
        if (controller.signal.aborted) return;
        workerError ??= err;
        throw err;
      }
      const at = performance.now();
      if (tasks.length === 0) {
        emptyWaits++;
        continue;
      }
      for (const t of tasks) {
        if (seen.has(t.taskId)) duplicates++;
        seen.add(t.taskId);
        arrivals.get(Number(t.payload?.i))?.(at);
      }
      for (const t of tasks) {
        await c.queue.completeTask({ taskId: t.taskId, workerId }).catch((err: unknown) => {
          if (!controller.signal.aborted) throw err;
        });
      }
    }
  });
  const failed = Promise.race(loops.map((l) => l.then(() => new Promise<never>(() => {}))));
  failed.catch(() => {});
  try {
    // Let every worker's first claim reach the server and start waiting.
    await sleep(500);
    const fromStart: number[] = [];
    const fromAck: number[] = [];
    const enqueue: number[] = [];
    for (let i = 0; i < SAMPLES + WARMUP; i++) {
      const held = new Promise<number>((resolve) => arrivals.set(i, resolve));
      const started = performance.now();
      await producer.queue.enqueueTask({ task: { queue, payload: payload(queue, i) } });
      const acked = performance.now();
      const deadline = sleep(CLAIM_DEADLINE_MS, "deadline" as const, { ref: false });
      const at = await Promise.race([held, deadline, failed]);
      arrivals.delete(i);
      if (at === "deadline") {
        throw new Error(`sample ${i}: no waiting worker held the task within ${CLAIM_DEADLINE_MS / 1000} s`);
      }
      if (i >= WARMUP) {
        fromStart.push(at - started);
        fromAck.push(at - acked);
        enqueue.push(acked - started);
      }
      await sleep(5);
    }
    if (duplicates > 0) checks.note(`${queue}: ${duplicates} tasks were claimed more than once`);
    return { fromStart, fromAck, enqueue, emptyWaits };
  } catch (err) {
    throw workerError ?? err;
  } finally {
    controller.abort();
    await Promise.allSettled(loops);
  }
}

/** The CPU shares of two back-to-back phases, as one. */
function weighted(a: Timed, b: Timed): CpuShare {
  const mix = (x: number, y: number) => (x * a.seconds + y * b.seconds) / (a.seconds + b.seconds);
  return {
    serverCpu: mix(a.serverCpu, b.serverCpu),
    benchCpu: mix(a.benchCpu, b.benchCpu),
    restCpu: mix(a.restCpu, b.restCpu),
  };
}

async function bench(backend: BenchBackend): Promise<string> {
  const checks = new Checks();
  const began = performance.now();
  const server = await startBenchServer(backend, "queue", ADMIN_URL);
  const startup = (performance.now() - began) / 1000;
  const serverLog = watchServer(server);
  const workers = Array.from({ length: WORKERS }, () => connect(server.url));
  const producer = connect(server.url);
  const rows: string[] = [];
  const row = (measurement: string, t: Timed | Error, perSecond = "tasks/s") =>
    rows.push(
      t instanceof Error
        ? `| ${measurement} | failed: ${describe(t)} | | | | |`
        : `| ${measurement} | **${int(t.tasks / t.seconds)} ${perSecond}** | ${int(t.tasks)} tasks, ${int(t.calls)} calls in ${t.seconds.toFixed(2)} s (${int(t.calls / t.seconds)} calls/s) | ${cpuCells(t)} |`,
    );
  const attempt = async (name: string, body: () => Promise<Timed>): Promise<Timed | Error> => {
    console.log(`${backend}: ${name}`);
    try {
      return await body();
    } catch (err) {
      checks.note(`${name}: ${describe(err)}`);
      return err instanceof Error ? err : new Error(String(err));
    }
  };
  let latencyRows: string[] = [];
  try {
    // 1. Enqueue only, one task per call.
    const single = await attempt("EnqueueTask", () =>
      timed(server, () => enqueueSingly(workers, "enqueue-single", TASKS, checks)),
    );
    row(`EnqueueTask, 1 task per call, ${WORKERS} clients at once`, single);
    if (!(single instanceof Error)) {
      // Drained unmeasured, so that the next phases find no pending task but their own.
      await attempt("drain enqueue-single", () =>
        timed(server, () => drain(workers, "enqueue-single", CLAIM_BATCH, TASKS, checks)),
      );
    }

    // 2. A backlog by EnqueueTasks, drained one task per call.
    const backlog = await attempt("EnqueueTasks backlog (one per call)", () =>
      timed(server, () => enqueueBatched(workers, "one-per-call", TASKS, checks)),
    );
    const one =
      backlog instanceof Error
        ? backlog
        : await attempt("ClaimTasks(1) + CompleteTask", () =>
            timed(server, async () => {
              const r = await drain(workers, "one-per-call", 1, TASKS, checks);
              await checkStats(producer, "one-per-call", TASKS, checks);
              return r;
            }),
          );

    // 3. A backlog by EnqueueTasks, drained in batches.
    const batchedBacklog = await attempt("EnqueueTasks backlog (batched)", () =>
      timed(server, () => enqueueBatched(workers, "batched", BATCHED_TASKS, checks)),
    );
    const batched =
      batchedBacklog instanceof Error
        ? batchedBacklog
        : await attempt(`ClaimTasks(${CLAIM_BATCH}) + CompleteTasks`, () =>
            timed(server, async () => {
              const r = await drain(workers, "batched", CLAIM_BATCH, BATCHED_TASKS, checks);
              await checkStats(producer, "batched", BATCHED_TASKS, checks);
              return r;
            }),
          );

    row(`EnqueueTasks of ${ENQUEUE_BATCH}, ${WORKERS} clients at once (the batched backlog)`, batchedBacklog);
    row(`EnqueueTasks of ${ENQUEUE_BATCH}, ${WORKERS} clients at once (the one-per-call backlog)`, backlog);
    row(
      `ClaimTasks(max_tasks 1) + CompleteTask, ${WORKERS} workers draining a backlog of ${int(TASKS)}`,
      one,
    );
    const endToEnd = (enq: Timed | Error, work: Timed | Error): Timed | Error =>
      enq instanceof Error
        ? enq
        : work instanceof Error
          ? work
          : {
              tasks: work.tasks,
              calls: enq.calls + work.calls,
              seconds: enq.seconds + work.seconds,
              ...weighted(enq, work),
            };
    row("... enqueue (EnqueueTasks) + claim + complete, end to end", endToEnd(backlog, one));
    row(
      `ClaimTasks(max_tasks ${CLAIM_BATCH}) + CompleteTasks, ${WORKERS} workers draining a backlog of ${int(BATCHED_TASKS)}`,
      batched,
    );
    row("... enqueue (EnqueueTasks) + claim + complete, end to end", endToEnd(batchedBacklog, batched));

    // 4. EnqueueTask → a waiting worker's claim.
    console.log(`${backend}: EnqueueTask → waiting worker`);
    try {
      // The same EnqueueTask calls with no worker waiting, for what waking one adds to the call.
      const idle: number[] = [];
      for (let i = 0; i < SAMPLES + WARMUP; i++) {
        const started = performance.now();
        await producer.queue.enqueueTask({
          task: { queue: "latency-idle", payload: payload("latency-idle", i) },
        });
        if (i >= WARMUP) idle.push(performance.now() - started);
        await sleep(5);
      }
      await drain(workers, "latency-idle", CLAIM_BATCH, SAMPLES + WARMUP, checks);
      const end = cpuWindow(server);
      const lat = await enqueueToClaim(workers, producer, checks);
      const cpu = end();
      const cells = (xs: number[]) => {
        const s = [...xs].sort((a, b) => a - b);
        return `${ms(percentile(s, 50))} | ${ms(percentile(s, 90))} | ${ms(percentile(s, 99))} | ${ms(s.at(-1) ?? Number.NaN)}`;
      };
      latencyRows = [
        `| **EnqueueTask sent → a waiting worker's ClaimTasks answers** | ${cells(lat.fromStart)} |`,
        `| EnqueueTask response → the same claim | ${cells(lat.fromAck)} |`,
        `| the EnqueueTask call itself (sent → response) | ${cells(lat.enqueue)} |`,
        `| EnqueueTask call with no worker waiting (another queue, before the workers start) | ${cells(idle)} |`,
        "",
        `CPU over the latency phase (${cpu.seconds.toFixed(1)} s), percent of one core: server / bench / rest of the machine ${cpuCells(cpu).replaceAll(" |", " /")}.`,
      ];
      if (lat.emptyWaits > 0) {
        checks.note(
          `latency: ${lat.emptyWaits} ClaimTasks waits of 30 s ended with no task (expected at most a few)`,
        );
      }
    } catch (err) {
      checks.note(`EnqueueTask → waiting worker: ${describe(err)}`);
      latencyRows = [
        `| EnqueueTask sent → a waiting worker's ClaimTasks answers | failed: ${describe(err)} | | | |`,
      ];
    }
  } finally {
    for (const c of [...workers, producer]) c.close();
    serverLog.stopping = true;
    await server.stop();
  }
  if (serverLog.exit !== undefined) checks.note(`the server exited during the run: ${serverLog.exit}`);
  if (serverLog.warnings.length > 0) {
    checks.note(
      `the server logged ${serverLog.warnings.length} warning(s) or error(s)${serverLog.warnings.length > MAX_LOG_LINES ? `; the first ${MAX_LOG_LINES}` : ""}:\n${serverLog.warnings
        .slice(0, MAX_LOG_LINES)
        .map((l) => `  \`${l.length > 600 ? `${l.slice(0, 600)}…` : l}\``)
        .join("\n")}`,
    );
  }

  const pgVersion = backend === "postgres" ? await postgresVersion(ADMIN_URL) : "";
  const lines = [
    `## ${backend}`,
    "",
    `Server: \`node src/main.ts\` on ${backend === "pglite" ? "embedded PGlite (a fresh data directory)" : `PostgreSQL (a fresh database; ${pgVersion})`}, ready in ${startup.toFixed(1)} s.`,
    "",
    "| throughput | result | what ran | server CPU | bench CPU | rest CPU |",
    "| --- | --- | --- | --- | --- | --- |",
    ...rows,
    "",
    `| latency, ${WORKERS} workers waiting in ClaimTasks(wait 30 s), ${SAMPLES} samples | p50 ms | p90 ms | p99 ms | max ms |`,
    "| --- | --- | --- | --- | --- |",
    ...latencyRows,
    "",
    checks.notes.length === 0
      ? "Checks: every task was claimed once, every completion changed its task, GetQueueStats counted every drained task COMPLETED."
      : `Checks: ${checks.notes.length} thing(s) off:\n\n${checks.notes.map((n) => `- ${n}`).join("\n")}`,
    "",
  ];
  const text = lines.join("\n");
  console.log(text);
  return text;
}

const loadAtStart = loadavg();
const uptimeAtStart = sh("uptime", []);
const benchStarted = performance.now();
if (args.peers) {
  console.log(
    "--peers: peer queues (graphile-worker, pg-boss) are a later issue; measuring agentstore only.",
  );
}
const sections: string[] = [];
for (const backend of DATABASES) {
  if (backend === "postgres" && !(await postgresReachable(ADMIN_URL))) {
    console.log(`PostgreSQL at ${ADMIN_URL} is unreachable: skipped`);
    sections.push(`## postgres\n\nSkipped: PostgreSQL at ${ADMIN_URL} is unreachable.\n`);
    continue;
  }
  try {
    sections.push(await bench(backend));
  } catch (err) {
    console.error(`${backend}:`, err);
    sections.push(`## ${backend}\n\nFailed: ${describe(err)}\n`);
  }
}
const dirty = sh("git", ["status", "--porcelain", "--", "src"]);
const header = [
  "# Work queue (QueueService)",
  "",
  `Measured ${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC; the run took ${((performance.now() - benchStarted) / 1000).toFixed(0)} s.`,
  "",
  `- Command: \`${commandLine("queue")}\``,
  `- Sizes: --tasks ${TASKS} --batched-tasks ${BATCHED_TASKS} --workers ${WORKERS} --samples ${SAMPLES} --enqueue-batch ${ENQUEUE_BATCH} --claim-batch ${CLAIM_BATCH}`,
  `- Machine: nproc ${sh("nproc", [])} (${availableParallelism()} available to Node; ${cpus()[0]?.model ?? "?"}), ${(totalmem() / 2 ** 30).toFixed(1)} GiB, Node ${process.version}`,
  `- Load average at start: ${loadAtStart.map((l) => l.toFixed(2)).join(" ")} (\`${uptimeAtStart}\`); at the end: ${loadavg()
    .map((l) => l.toFixed(2))
    .join(" ")}`,
  `- Server: the working tree at commit ${sh("git", ["rev-parse", "--short", "HEAD"])}${dirty && dirty !== "?" ? ` with uncommitted changes in src/ (${dirty.split("\n").length} files)` : ""}; clients on loopback, each worker on its own HTTP/2 connection; client, server and database share the machine's cores`,
  `- CPU columns: percent of one core over the phase (the machine has ${availableParallelism()} cores, so ${availableParallelism() * 100}% is all of it): the server process, this benchmark process, and the rest of the machine (PostgreSQL's processes and any other work running meanwhile; more than PostgreSQL's share there disturbs the figures)`,
  "- Throughput phases drain a backlog enqueued beforehand (each in its own queue, no lease runs out: lease 10 min); the end-to-end rows add the time the backlog took to enqueue",
  "- Latency: one task at a time, 5 ms apart, after 20 warm-up samples; the worker that claimed completes the task and waits again while the others wait; the last row is the same producer's EnqueueTask calls made earlier with no worker waiting",
  "",
].join("\n");
const out = isAbsolute(args.out ?? "") ? (args.out ?? "") : join(ROOT, args.out ?? "bench/results/queue.md");
mkdirSync(dirname(out), { recursive: true });
writeFileSync(out, `${header}\n${sections.join("\n")}`);
console.log(`\nwrote ${out}`);
