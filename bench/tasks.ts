/**
 * A2A task benchmark (TaskService): how fast whole tasks are saved and replaced, how fast updates
 * are published into them one per call and in batches, how fast tasks are read, and how soon a
 * StreamTaskUpdates subscriber and a GetTask long poll see a published update. The server runs as
 * its own process (`node src/main.ts`, bench/server.ts) on a throwaway database, clients in this
 * one (the typed client of src/client), over gRPC on loopback, each client on its own HTTP/2
 * connection.
 *
 *   npm run bench:tasks                                   # both databases, ~1-2 min on 2 cores
 *   npm run bench:tasks -- --db postgres --tasks 1000 --clients 8 --samples 300
 *
 * Per database, in this order:
 * 1. SaveTask of `--tasks` new tasks, `--clients` clients at once. Each is a realistic A2A task:
 *    status WORKING with an agent message, one artifact with a text part of ~500 bytes, a history
 *    of 4 messages (user and agent), metadata.
 * 2. Read-modify-write: `--saves` times GetTask, then SaveTask of the task with its status message
 *    replaced, one message more in its history and its metadata changed, with expected_generation
 *    the generation read (ABORTED answers are retried and counted); each client on its own tasks.
 * 3. PublishTaskUpdate, one update per call: `--updates` updates, cycling a status update (WORKING,
 *    with a message), an artifact chunk (append, ~200 bytes) and a message; each client on its own
 *    `--tasks-per-client` tasks, in turn. Then the same with `--batch` (10) updates per call,
 *    `--batched-updates` updates, on another `--tasks-per-client` tasks per client.
 * 4. GetTask, `--reads` reads over every task, `--clients` clients at once; then the same with
 *    history_length 1.
 * 5. Latency, one sample at a time, `--samples` after 20 of warm-up, 5 ms apart:
 *    - PublishTaskUpdate sent → a StreamTaskUpdates subscriber on the same task (its own
 *      connection) holds the entry;
 *    - a GetTask long poll (wait_for_generation_after = the task's generation, its own
 *      connection) is sent, and 25 ms later a PublishTaskUpdate: publish sent → long poll answered.
 *
 * Checks at the end: every task's generation and update_seq (and history length and artifact
 * chunks) are what the benchmark wrote; a StreamTaskUpdates with after_seq 0 of every task replays
 * exactly update_seq entries, seqs 1..n in order, of the kinds written (a `task` entry per SaveTask,
 * then the updates), the last one at the task's generation. Every answer of the phases is checked
 * too (created, generations, seqs); whatever was off is listed under "Checks" in the result, and a
 * phase that fails is reported with its error instead of a figure.
 *
 * Prints Markdown and writes it to bench/results/tasks.md (see --out).
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { availableParallelism, cpus, loadavg, totalmem } from "node:os";
import { dirname, isAbsolute, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { parseArgs } from "node:util";
import { create, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import {
  type AgentStoreClient,
  Code,
  ConnectError,
  createClient,
  type MessageSchema,
  Role,
  type Task,
  TaskSchema,
  TaskState,
  type TaskUpdateSchema,
} from "../src/client/index.ts";
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

const USAGE = `node bench/tasks.ts [options]
  --db pglite|postgres|both   databases to measure (both)
  --tasks N            tasks created by SaveTask in phase 1; every later phase works on them (1000)
  --saves N            read-modify-write SaveTasks with expected_generation (500)
  --updates N          PublishTaskUpdate calls of one update (1500)
  --batched-updates N  updates published --batch per call (5000)
  --batch N            updates per batched PublishTaskUpdate (10, at most 100)
  --reads N            GetTask reads, whole and with history_length 1, each (2000)
  --clients N          concurrent clients, each on its own HTTP/2 connection (8)
  --tasks-per-client N tasks each client publishes into, per publish phase (10)
  --samples N          latency samples, after 20 of warm-up, per latency measurement (300)
  --admin-url URL      PostgreSQL to create the throwaway database on ($TEST_POSTGRES_URL or
                       postgres://postgres@127.0.0.1:5432/postgres)
  --out FILE           Markdown result file (bench/results/tasks.md)`;

const { values: args } = parseArgs({
  options: {
    db: { type: "string", default: "both" },
    tasks: { type: "string", default: "1000" },
    saves: { type: "string", default: "500" },
    updates: { type: "string", default: "1500" },
    "batched-updates": { type: "string", default: "5000" },
    batch: { type: "string", default: "10" },
    reads: { type: "string", default: "2000" },
    clients: { type: "string", default: "8" },
    "tasks-per-client": { type: "string", default: "10" },
    samples: { type: "string", default: "300" },
    "admin-url": { type: "string", default: DEFAULT_ADMIN_URL },
    out: { type: "string", default: "bench/results/tasks.md" },
    help: { type: "boolean", short: "h", default: false },
  },
});
if (args.help) {
  console.log(USAGE);
  process.exit(0);
}
const positive = positiveOption(USAGE);
const DATABASES = databasesOption(args.db, USAGE);
const SAVES = positive("saves", args.saves);
const UPDATES = positive("updates", args.updates);
const BATCHED_UPDATES = positive("batched-updates", args["batched-updates"]);
const BATCH = Math.min(100, positive("batch", args.batch));
const READS = positive("reads", args.reads);
const CLIENTS = positive("clients", args.clients);
const TASKS_PER_CLIENT = positive("tasks-per-client", args["tasks-per-client"]);
/** The two publish phases each need their own tasks-per-client × clients tasks. */
const TASKS = Math.max(2 * CLIENTS * TASKS_PER_CLIENT, positive("tasks", args.tasks));
const SAMPLES = positive("samples", args.samples);
const ADMIN_URL = args["admin-url"] ?? DEFAULT_ADMIN_URL;
const WARMUP = 20;
/** Between sending a long poll and the publish that should wake it: time for it to start waiting. */
const POLL_SETTLE_MS = 25;
const POLL_TIMEOUT = durationFromMs(30_000);
/** How long a latency sample may take before it is called lost. */
const SAMPLE_DEADLINE_MS = 35_000;
/** How long the final check waits for one task's replayed log. */
const REPLAY_DEADLINE_MS = 20_000;
const ARTIFACT_ID = "answer";

type TaskInit = MessageInitShape<typeof TaskSchema>;
type MessageInit = MessageInitShape<typeof MessageSchema>;
type UpdateInit = MessageInitShape<typeof TaskUpdateSchema>;
type EntryKind = "task" | "statusUpdate" | "artifactUpdate" | "message";

const int = (n: number) => Math.round(n).toLocaleString("en-US");
const ms = (n: number) => n.toFixed(2);
const kib = (bytes: number) => `${(bytes / 1024).toFixed(1)} KiB`;

/** What a measured phase did: how many things (tasks, saves, updates, reads), calls, how long, CPU. */
interface Timed extends CpuShare {
  count: number;
  calls: number;
  seconds: number;
  /** Said after the calls in the "what ran" cell. */
  note?: string;
}

async function timed(
  server: BenchServer,
  body: () => Promise<{ count: number; calls: number; note?: string }>,
): Promise<Timed> {
  const end = cpuWindow(server);
  const r = await body();
  return { ...r, ...end() };
}

/** Where this database's run noted what was off. */
class Checks {
  readonly notes: string[] = [];
  note(text: string) {
    this.notes.push(text);
    console.log(`  ! ${text}`);
  }
  /** Notes `count` things of one kind at once, if there were any. */
  count(count: number, text: string) {
    if (count > 0) this.note(`${int(count)} ${text}`);
  }
}

// ---------------------------------------------------------------------------------------------
// What the tasks hold.

const PROSE =
  "The agent compared three itineraries for the Lisbon offsite and kept the one with the shortest " +
  "total travel time for the twelve attendees. Flights from Berlin and Amsterdam land before noon " +
  "on Tuesday; the Madrid group arrives by train the evening before. The hotel near Cais do Sodre " +
  "holds a block of rooms until Friday at the negotiated rate, breakfast included, and the meeting " +
  "room seats sixteen with a projector and a whiteboard. Dinner on Wednesday is booked for fourteen " +
  "at a place in Alfama that handles the two vegetarian and one gluten-free requests. The budget " +
  "stays under the limit by about eight percent, most of it saved on the train for the Madrid team. ";

/** About `length` characters of prose, starting somewhere that depends on `salt`. */
function prose(length: number, salt: number): string {
  const start = (salt * 97) % PROSE.length;
  let text = PROSE.slice(start);
  while (text.length < length) text += PROSE;
  return text.slice(0, length);
}

/** What the benchmark expects of a task, from what it wrote. */
interface Expected {
  contextId: string;
  generation: number;
  updateSeq: number;
  /** History messages. */
  history: number;
  /** Parts of the artifact ARTIFACT_ID. */
  parts: number;
  /** The kinds of its update log's entries, seq 1 first. */
  kinds: EntryKind[];
  /** PublishTaskUpdate updates sent to it, for the cycle of update kinds. */
  published: number;
}

function message(taskId: string, contextId: string, id: string, role: Role, text: string): MessageInit {
  return {
    messageId: id,
    taskId,
    contextId,
    role,
    parts: [{ content: { case: "text", value: text }, mediaType: "text/plain" }],
  };
}

/** A new A2A task as an agent saves it: working, one artifact, four messages of history, metadata. */
function newTask(id: string, contextId: string, i: number): TaskInit {
  return {
    id,
    contextId,
    status: {
      state: TaskState.WORKING,
      message: message(id, contextId, `${id}-status-0`, Role.AGENT, prose(120, i + 5)),
    },
    artifacts: [
      {
        artifactId: ARTIFACT_ID,
        name: "itinerary",
        description: "The proposed travel plan",
        parts: [{ content: { case: "text", value: prose(500, i) }, mediaType: "text/markdown" }],
        metadata: { format: "markdown", draft: true },
      },
    ],
    history: [
      message(id, contextId, `${id}-h-0`, Role.USER, prose(160, i + 1)),
      message(id, contextId, `${id}-h-1`, Role.AGENT, prose(220, i + 2)),
      message(id, contextId, `${id}-h-2`, Role.USER, prose(90, i + 3)),
      message(id, contextId, `${id}-h-3`, Role.AGENT, prose(180, i + 4)),
    ],
    metadata: {
      agent: "travel-planner",
      model: "example-large-2",
      usage: { inputTokens: 1834 + i, outputTokens: 612 },
      tags: ["offsite", "lisbon", "q3"],
      priority: i % 3,
    },
  };
}

const expectNew = (contextId: string): Expected => ({
  contextId,
  generation: 1,
  updateSeq: 1,
  history: 4,
  parts: 1,
  kinds: ["task"],
  published: 0,
});

/** The next update for a task, cycling status, artifact chunk and message, and what it changes. */
function nextUpdate(id: string, e: Expected): UpdateInit {
  const k = e.published++;
  e.updateSeq++;
  switch (k % 3) {
    case 0:
      // The previous status message (every status here has one) joins the history.
      e.history++;
      e.kinds.push("statusUpdate");
      return {
        update: {
          case: "statusUpdate",
          value: {
            status: {
              state: TaskState.WORKING,
              message: message(id, e.contextId, `${id}-status-u${k}`, Role.AGENT, prose(140, k)),
            },
            metadata: { step: k },
          },
        },
      };
    case 1:
      e.parts++;
      e.kinds.push("artifactUpdate");
      return {
        update: {
          case: "artifactUpdate",
          value: {
            artifact: {
              artifactId: ARTIFACT_ID,
              parts: [{ content: { case: "text", value: prose(200, k) }, mediaType: "text/markdown" }],
            },
            append: true,
          },
        },
      };
    default:
      e.history++;
      e.kinds.push("message");
      return {
        update: {
          case: "message",
          value: message(id, e.contextId, `${id}-m-u${k}`, Role.AGENT, prose(150, k)),
        },
      };
  }
}

// ---------------------------------------------------------------------------------------------
// The phases.

const taskId = (i: number) => `task-${String(i).padStart(6, "0")}`;
const contextOf = (i: number) => `ctx-${String(i % 100).padStart(3, "0")}`;

/** Phase 1: TASKS new tasks by SaveTask, the clients at once. */
async function createTasks(clients: AgentStoreClient[], expected: Map<string, Expected>, checks: Checks) {
  let next = 0;
  let wrong = 0;
  await Promise.all(
    clients.map(async (c) => {
      while (next < TASKS) {
        const i = next++;
        const id = taskId(i);
        const { task, created } = await c.tasks.saveTask({ task: newTask(id, contextOf(i), i) });
        if (!created || task?.generation !== 1n || task.updateSeq !== 1n) wrong++;
        expected.set(id, expectNew(contextOf(i)));
      }
    }),
  );
  checks.count(wrong, "SaveTask answers of a new task had created = false or generation / update_seq ≠ 1");
  return { count: TASKS, calls: TASKS };
}

/** Phase 2: GetTask, change, SaveTask with expected_generation; client c on tasks c, c + clients, ... */
async function readModifyWrite(clients: AgentStoreClient[], expected: Map<string, Expected>, checks: Checks) {
  let calls = 0;
  let conflicts = 0;
  let stale = 0;
  let wrong = 0;
  const perClient = Math.ceil(SAVES / clients.length);
  await Promise.all(
    clients.map(async (c, w) => {
      const mine = Math.min(perClient, SAVES - w * perClient);
      for (let n = 0; n < mine; n++) {
        const i = (w + n * clients.length) % TASKS;
        const id = taskId(i);
        const e = expected.get(id);
        if (e === undefined) throw new Error(`${id} was not created`);
        for (;;) {
          const { task } = await c.tasks.getTask({ id });
          calls++;
          if (task === undefined) throw new Error(`GetTask ${id} answered no task`);
          if (Number(task.generation) !== e.generation || task.history.length !== e.history) stale++;
          const step = Number(task.generation);
          const changed: TaskInit = {
            id,
            contextId: task.contextId,
            artifacts: task.artifacts,
            status: {
              state: TaskState.WORKING,
              message: message(id, e.contextId, `${id}-status-s${step}`, Role.AGENT, prose(130, step + i)),
            },
            history: [
              ...task.history,
              message(id, e.contextId, `${id}-h-s${step}`, Role.USER, prose(110, step + i)),
            ],
            metadata: { ...(task.metadata ?? {}), revision: step + 1, lastEditor: `client-${w}` },
          };
          try {
            const res = await c.tasks.saveTask({ task: changed, expectedGeneration: task.generation });
            calls++;
            if (res.created || res.task?.generation !== task.generation + 1n) wrong++;
            e.generation = Number(task.generation) + 1;
            e.updateSeq = Number(task.updateSeq) + 1;
            e.history = task.history.length + 1;
            e.kinds.push("task");
            break;
          } catch (err) {
            calls++;
            if (err instanceof ConnectError && err.code === Code.Aborted) {
              conflicts++;
              continue;
            }
            throw err;
          }
        }
      }
    }),
  );
  checks.count(
    stale,
    "GetTask answers before a read-modify-write were not at the generation or history written",
  );
  checks.count(wrong, "read-modify-write SaveTask answers had created = true or the wrong generation");
  // Each client writes only its own tasks: a conflict means a write the benchmark did not make.
  checks.count(conflicts, "read-modify-write SaveTasks answered ABORTED (retried)");
  return { count: SAVES, calls, note: `${int(conflicts)} ABORTED` };
}

/**
 * Phase 3: `total` updates by PublishTaskUpdate, `perCall` per call; client c publishes into tasks
 * first + c × TASKS_PER_CLIENT ... (its own), one after another in turn.
 */
async function publish(
  clients: AgentStoreClient[],
  expected: Map<string, Expected>,
  first: number,
  perCall: number,
  total: number,
  checks: Checks,
) {
  let next = 0;
  let calls = 0;
  let wrong = 0;
  await Promise.all(
    clients.map(async (c, w) => {
      for (let turn = 0; ; turn++) {
        const n = Math.min(perCall, total - next);
        if (n <= 0) return;
        next += n;
        const id = taskId(first + w * TASKS_PER_CLIENT + (turn % TASKS_PER_CLIENT));
        const e = expected.get(id);
        if (e === undefined) throw new Error(`${id} was not created`);
        const seqBefore = e.updateSeq;
        const updates = Array.from({ length: n }, () => nextUpdate(id, e));
        const res = await c.tasks.publishTaskUpdate({ taskId: id, updates });
        calls++;
        e.generation++;
        if (
          res.firstSeq !== BigInt(seqBefore + 1) ||
          res.lastSeq !== BigInt(seqBefore + n) ||
          res.task?.generation !== BigInt(e.generation) ||
          res.task.updateSeq !== BigInt(e.updateSeq)
        ) {
          wrong++;
        }
      }
    }),
  );
  checks.count(
    wrong,
    `PublishTaskUpdate answers (${perCall} per call) had first_seq / last_seq / generation / update_seq other than expected`,
  );
  return { count: total, calls };
}

/** Phase 4: `total` GetTasks over every task in turn, the clients at once. */
async function readTasks(
  clients: AgentStoreClient[],
  expected: Map<string, Expected>,
  total: number,
  historyLength: number | undefined,
  checks: Checks,
) {
  let next = 0;
  let wrong = 0;
  await Promise.all(
    clients.map(async (c) => {
      while (next < total) {
        const i = next++ % TASKS;
        const id = taskId(i);
        const { task } = await c.tasks.getTask({ id, historyLength });
        const e = expected.get(id);
        const history = historyLength === undefined ? e?.history : Math.min(historyLength, e?.history ?? 0);
        if (task?.generation !== BigInt(e?.generation ?? -1) || task.history.length !== history) wrong++;
      }
    }),
  );
  checks.count(
    wrong,
    `GetTask${historyLength === undefined ? "" : ` (history_length ${historyLength})`} answers had a generation or history length other than expected`,
  );
  return { count: total, calls: total };
}

interface Latency {
  fromStart: number[];
  fromAck: number[];
  publish: number[];
}

/** Runs `samples` one at a time; races each against the deadline and `failed`. */
async function sampled(
  name: string,
  failed: Promise<never>,
  sample: (i: number) => Promise<{ started: number; acked: number; arrived: Promise<number> }>,
): Promise<Latency> {
  const out: Latency = { fromStart: [], fromAck: [], publish: [] };
  for (let i = 0; i < SAMPLES + WARMUP; i++) {
    const { started, acked, arrived } = await sample(i);
    const deadline = sleep(SAMPLE_DEADLINE_MS, "deadline" as const, { ref: false });
    const at = await Promise.race([arrived, deadline, failed]);
    if (at === "deadline")
      throw new Error(`${name} sample ${i}: nothing within ${SAMPLE_DEADLINE_MS / 1000} s`);
    if (i >= WARMUP) {
      out.fromStart.push(at - started);
      out.fromAck.push(at - acked);
      out.publish.push(acked - started);
    }
    await sleep(5);
  }
  return out;
}

/** Phase 5a: PublishTaskUpdate → a StreamTaskUpdates subscriber on the same task. */
async function publishToStream(
  subscriber: AgentStoreClient,
  producer: AgentStoreClient,
  expected: Map<string, Expected>,
  checks: Checks,
): Promise<Latency> {
  const id = "latency-stream";
  const contextId = "ctx-latency";
  await producer.tasks.saveTask({ task: newTask(id, contextId, 7) });
  const e = expectNew(contextId);
  expected.set(id, e);
  const controller = new AbortController();
  const arrivals = new Map<number, (at: number) => void>();
  const seqs: number[] = [];
  let subscribed!: () => void;
  const ready = new Promise<void>((resolve) => {
    subscribed = resolve;
  });
  const loop = (async () => {
    // Without after_seq the stream starts with the task as it is: then it is following.
    for await (const r of subscriber.tasks.streamTaskUpdates({ taskId: id }, { signal: controller.signal })) {
      const at = performance.now();
      if (r.update.case === "task") {
        subscribed();
        continue;
      }
      seqs.push(Number(r.seq));
      arrivals.get(Number(r.seq))?.(at);
    }
    throw new Error("the stream ended");
  })();
  const failed = loop.then(
    () => new Promise<never>(() => {}),
    (err: unknown) => {
      if (controller.signal.aborted) return new Promise<never>(() => {});
      throw err;
    },
  );
  failed.catch(() => {});
  try {
    await Promise.race([ready, failed]);
    const result = await sampled("publish → stream", failed, async () => {
      const seq = e.updateSeq + 1;
      const arrived = new Promise<number>((resolve) => arrivals.set(seq, resolve));
      const update = nextUpdate(id, e);
      const started = performance.now();
      await producer.tasks.publishTaskUpdate({ taskId: id, updates: [update] });
      const acked = performance.now();
      e.generation++;
      return { started, acked, arrived: arrived.finally(() => arrivals.delete(seq)) };
    });
    const gaps = seqs.filter((s, k) => s !== 2 + k).length;
    checks.count(gaps, "entries of the latency stream came out of order, twice or after a gap");
    return result;
  } finally {
    controller.abort();
    await loop.catch(() => {});
  }
}

/** Phase 5b: a GetTask long poll, then 25 ms later a PublishTaskUpdate that should wake it. */
async function publishToLongPoll(
  poller: AgentStoreClient,
  producer: AgentStoreClient,
  expected: Map<string, Expected>,
  checks: Checks,
): Promise<Latency> {
  const id = "latency-poll";
  const contextId = "ctx-latency";
  await producer.tasks.saveTask({ task: newTask(id, contextId, 11) });
  const e = expectNew(contextId);
  expected.set(id, e);
  let early = 0;
  let wrong = 0;
  const never = new Promise<never>(() => {});
  const result = await sampled("publish → long poll", never, async () => {
    const after = BigInt(e.generation);
    let answeredAt = Number.NaN;
    const poll = poller.tasks
      .getTask({ id, waitForGenerationAfter: after, timeout: POLL_TIMEOUT, historyLength: 0 })
      .then(({ task }) => {
        answeredAt = performance.now();
        if (task?.generation !== after + 1n) wrong++;
        return answeredAt;
      });
    await sleep(POLL_SETTLE_MS);
    if (!Number.isNaN(answeredAt)) early++;
    const update = nextUpdate(id, e);
    const started = performance.now();
    await producer.tasks.publishTaskUpdate({ taskId: id, updates: [update] });
    const acked = performance.now();
    e.generation++;
    return { started, acked, arrived: poll };
  });
  checks.count(early, "long polls were answered before the publish that should wake them");
  checks.count(wrong, "long polls answered at a generation other than the one published");
  return result;
}

/** The final check of every task: GetTask, then its whole log from after_seq 0. */
async function verify(clients: AgentStoreClient[], expected: Map<string, Expected>, checks: Checks) {
  const ids = [...expected.keys()];
  let next = 0;
  let bytes = 0;
  let largest = 0;
  const off: string[] = [];
  await Promise.all(
    clients.map(async (c) => {
      while (next < ids.length) {
        const id = ids[next++] as string;
        const e = expected.get(id) as Expected;
        let task: Task | undefined;
        try {
          ({ task } = await c.tasks.getTask({ id }));
        } catch (err) {
          off.push(`${id}: GetTask ${describe(err)}`);
          continue;
        }
        if (task === undefined) {
          off.push(`${id}: GetTask answered no task`);
          continue;
        }
        const size = toBinary(TaskSchema, task).byteLength;
        bytes += size;
        largest = Math.max(largest, size);
        const parts = task.artifacts.find((a) => a.artifactId === ARTIFACT_ID)?.parts.length ?? 0;
        const wrong: string[] = [];
        if (
          task.generation !== BigInt(e.generation) ||
          task.updateSeq !== BigInt(e.updateSeq) ||
          task.history.length !== e.history ||
          parts !== e.parts
        ) {
          wrong.push(
            `generation ${task.generation}, update_seq ${task.updateSeq}, history ${task.history.length}, artifact parts ${parts}; wrote ${e.generation}, ${e.updateSeq}, ${e.history}, ${e.parts}`,
          );
        }
        const replay = await replayLog(c, id, e);
        if (replay !== undefined) wrong.push(replay);
        if (wrong.length > 0) off.push(`${id}: ${wrong.join("; ")}`);
      }
    }),
  );
  if (off.length > 0) {
    checks.note(
      `${off.length} of ${ids.length} tasks were not as written; the first ${Math.min(5, off.length)}:\n${off
        .slice(0, 5)
        .map((l) => `  - ${l}`)
        .join("\n")}`,
    );
  }
  return { tasks: ids.length, bytes, largest };
}

/** StreamTaskUpdates(after_seq 0) up to the task's update_seq: what is off, or undefined. */
async function replayLog(c: AgentStoreClient, id: string, e: Expected): Promise<string | undefined> {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), REPLAY_DEADLINE_MS);
  const seqs: number[] = [];
  const kinds: string[] = [];
  let generation = -1n;
  try {
    for await (const r of c.tasks.streamTaskUpdates(
      { taskId: id, afterSeq: 0n, historyLength: 0 },
      { signal: controller.signal },
    )) {
      seqs.push(Number(r.seq));
      kinds.push(r.update.case ?? "none");
      generation = r.generation;
      if (r.seq >= BigInt(e.updateSeq)) break;
    }
  } catch (err) {
    return controller.signal.aborted
      ? `the replay held ${seqs.length} of ${e.updateSeq} entries after ${REPLAY_DEADLINE_MS / 1000} s`
      : `the replay failed after ${seqs.length} entries: ${describe(err)}`;
  } finally {
    clearTimeout(timer);
    controller.abort();
  }
  if (seqs.length !== e.updateSeq || seqs.some((s, k) => s !== k + 1)) {
    return `the replay held ${seqs.length} entries, seqs ${seqs.slice(0, 5).join(",")}${seqs.length > 5 ? ",…" : ""}; expected seqs 1..${e.updateSeq}`;
  }
  const firstOff = kinds.findIndex((k, i) => k !== e.kinds[i]);
  if (firstOff >= 0)
    return `replayed entry ${firstOff + 1} is a ${kinds[firstOff]}, written a ${e.kinds[firstOff]}`;
  if (generation !== BigInt(e.generation)) {
    return `the last replayed entry is at generation ${generation}, the task at ${e.generation}`;
  }
  return undefined;
}

async function bench(backend: BenchBackend): Promise<string> {
  const checks = new Checks();
  const began = performance.now();
  const server = await startBenchServer(backend, "tasks", ADMIN_URL);
  const startup = (performance.now() - began) / 1000;
  const serverLog = watchServer(server);
  const clients = Array.from({ length: CLIENTS }, () => createClient({ baseUrl: server.url }));
  const producer = createClient({ baseUrl: server.url });
  const listener = createClient({ baseUrl: server.url });
  const expected = new Map<string, Expected>();
  const rows: string[] = [];
  const row = (measurement: string, t: Timed | Error, unit: string) =>
    rows.push(
      t instanceof Error
        ? `| ${measurement} | failed: ${describe(t)} | | | | |`
        : `| ${measurement} | **${int(t.count / t.seconds)} ${unit}/s** | ${int(t.count)} ${unit}, ${int(t.calls)} calls in ${t.seconds.toFixed(2)} s (${int(t.calls / t.seconds)} calls/s${t.note === undefined ? "" : `; ${t.note}`}) | ${cpuCells(t)} |`,
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
  const sampleBytes = toBinary(
    TaskSchema,
    create(TaskSchema, newTask(taskId(0), contextOf(0), 0)),
  ).byteLength;
  let latencyRows: string[] = [];
  let stored = "";
  try {
    // 1. New tasks.
    row(
      `SaveTask of a new task (${kib(sampleBytes)}: status + message, 1 artifact of 500 B, 4 messages, metadata), ${CLIENTS} clients at once`,
      await attempt("SaveTask (create)", () => timed(server, () => createTasks(clients, expected, checks))),
      "tasks",
    );

    // 2. Read-modify-write.
    row(
      `GetTask + SaveTask(expected_generation) of the task changed (status message, +1 history message, metadata), ${CLIENTS} clients each on its own tasks`,
      await attempt("GetTask + SaveTask (replace)", () =>
        timed(server, () => readModifyWrite(clients, expected, checks)),
      ),
      "saves",
    );

    // 3. Updates, one per call and batched, each phase on its own tasks.
    const published = CLIENTS * TASKS_PER_CLIENT;
    row(
      `PublishTaskUpdate, 1 update per call (status / artifact chunk (append) / message in turn), ${CLIENTS} clients each on its own ${TASKS_PER_CLIENT} tasks`,
      await attempt("PublishTaskUpdate (1 per call)", () =>
        timed(server, () => publish(clients, expected, 0, 1, UPDATES, checks)),
      ),
      "updates",
    );
    row(
      `PublishTaskUpdate, ${BATCH} updates per call (the same cycle), ${CLIENTS} clients each on another ${TASKS_PER_CLIENT} tasks`,
      await attempt(`PublishTaskUpdate (${BATCH} per call)`, () =>
        timed(server, () => publish(clients, expected, published, BATCH, BATCHED_UPDATES, checks)),
      ),
      "updates",
    );

    // 4. Reads.
    row(
      `GetTask, whole task, ${CLIENTS} clients at once, over all ${int(TASKS)} tasks`,
      await attempt("GetTask", () =>
        timed(server, () => readTasks(clients, expected, READS, undefined, checks)),
      ),
      "reads",
    );
    row(
      "GetTask with history_length 1, the same",
      await attempt("GetTask (history_length 1)", () =>
        timed(server, () => readTasks(clients, expected, READS, 1, checks)),
      ),
      "reads",
    );

    // 5. Latency.
    const cells = (xs: number[]) => {
      const s = [...xs].sort((a, b) => a - b);
      return `${ms(percentile(s, 50))} | ${ms(percentile(s, 90))} | ${ms(percentile(s, 99))} | ${ms(s.at(-1) ?? Number.NaN)}`;
    };
    const end = cpuWindow(server);
    console.log(`${backend}: PublishTaskUpdate → StreamTaskUpdates subscriber`);
    try {
      const s = await publishToStream(listener, producer, expected, checks);
      latencyRows.push(
        `| **PublishTaskUpdate sent → a StreamTaskUpdates subscriber of the task holds the entry** | ${cells(s.fromStart)} |`,
        `| PublishTaskUpdate response → the same entry at the subscriber (negative: it came first) | ${cells(s.fromAck)} |`,
        `| the PublishTaskUpdate call itself (sent → response) | ${cells(s.publish)} |`,
      );
    } catch (err) {
      checks.note(`PublishTaskUpdate → stream: ${describe(err)}`);
      latencyRows.push(
        `| PublishTaskUpdate → StreamTaskUpdates subscriber | failed: ${describe(err)} | | | |`,
      );
    }
    console.log(`${backend}: PublishTaskUpdate → GetTask long poll`);
    try {
      const p = await publishToLongPoll(listener, producer, expected, checks);
      latencyRows.push(
        `| **PublishTaskUpdate sent → a GetTask long poll (wait_for_generation_after) answers** | ${cells(p.fromStart)} |`,
        `| PublishTaskUpdate response → the long poll's answer | ${cells(p.fromAck)} |`,
        `| the PublishTaskUpdate call itself (sent → response) | ${cells(p.publish)} |`,
      );
    } catch (err) {
      checks.note(`PublishTaskUpdate → long poll: ${describe(err)}`);
      latencyRows.push(`| PublishTaskUpdate → GetTask long poll | failed: ${describe(err)} | | | |`);
    }
    const cpu = end();
    latencyRows.push(
      "",
      `CPU over the latency phases (${cpu.seconds.toFixed(1)} s), percent of one core: server / bench / rest of the machine ${cpuCells(cpu).replaceAll(" |", " /")}.`,
    );

    // Checks of every task.
    console.log(`${backend}: checking every task and its log`);
    const v = await verify(clients, expected, checks);
    stored = `After the run: ${int(v.tasks)} tasks, ${kib(v.bytes / v.tasks)} on average (as GetTask answers them, protobuf), the largest ${kib(v.largest)}.`;
  } catch (err) {
    latencyRows = latencyRows.length > 0 ? latencyRows : [`| latency | failed: ${describe(err)} | | | |`];
    checks.note(`the run stopped: ${describe(err)}`);
  } finally {
    for (const c of [...clients, producer, listener]) c.close();
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
    `| latency, one sample at a time, ${SAMPLES} samples | p50 ms | p90 ms | p99 ms | max ms |`,
    "| --- | --- | --- | --- | --- |",
    ...latencyRows,
    "",
    stored,
    "",
    checks.notes.length === 0
      ? `Checks: every answer was as expected; every task's generation, update_seq, history length and artifact parts are what was written, and StreamTaskUpdates(after_seq 0) of every task replayed exactly update_seq entries, seqs 1..n, of the kinds written.`
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
  "# A2A tasks (TaskService)",
  "",
  `Measured ${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC; the run took ${((performance.now() - benchStarted) / 1000).toFixed(0)} s.`,
  "",
  `- Command: \`${commandLine("tasks")}\``,
  `- Sizes: --tasks ${TASKS} --saves ${SAVES} --updates ${UPDATES} --batched-updates ${BATCHED_UPDATES} --batch ${BATCH} --reads ${READS} --clients ${CLIENTS} --tasks-per-client ${TASKS_PER_CLIENT} --samples ${SAMPLES}`,
  `- Machine: nproc ${sh("nproc", [])} (${availableParallelism()} available to Node; ${cpus()[0]?.model ?? "?"}), ${(totalmem() / 2 ** 30).toFixed(1)} GiB, Node ${process.version}`,
  `- Load average at start: ${loadAtStart.map((l) => l.toFixed(2)).join(" ")} (\`${uptimeAtStart}\`); at the end: ${loadavg()
    .map((l) => l.toFixed(2))
    .join(" ")}`,
  `- Server: the working tree at commit ${sh("git", ["rev-parse", "--short", "HEAD"])}${dirty && dirty !== "?" ? ` with uncommitted changes in src/ (${dirty.split("\n").length} files)` : ""}; clients (the typed client of src/client) on loopback, each on its own HTTP/2 connection; client, server and database share the machine's cores`,
  `- CPU columns: percent of one core over the phase (the machine has ${availableParallelism()} cores, so ${availableParallelism() * 100}% is all of it): the server process, this benchmark process, and the rest of the machine (PostgreSQL's processes and any other work running meanwhile; more than PostgreSQL's share there disturbs the figures)`,
  "- Phases in the order of the table, on the same tasks: the read-modify-write phase replaces tasks made in the first, the publish phases grow the first tasks' history and artifact, the reads read them all as they are then; no task expires (no TTL)",
  `- Latency: one sample at a time, 5 ms apart, after ${WARMUP} warm-up samples, each on a task of its own that takes every update (so it grows by the ${SAMPLES + WARMUP} updates); the subscriber and the long poll on a connection of their own, the publisher on another; the long poll is sent ${POLL_SETTLE_MS} ms before the publish that wakes it`,
  "",
].join("\n");
const out = isAbsolute(args.out ?? "") ? (args.out ?? "") : join(ROOT, args.out ?? "bench/results/tasks.md");
mkdirSync(dirname(out), { recursive: true });
writeFileSync(out, `${header}\n${sections.join("\n")}`);
console.log(`\nwrote ${out}`);
