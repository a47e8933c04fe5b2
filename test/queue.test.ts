import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import type { MessageInitShape } from "@bufbuild/protobuf";
import {
  type Duration,
  durationFromMs,
  durationMs,
  type Timestamp,
  timestampFromMs,
  timestampMs,
} from "@bufbuild/protobuf/wkt";
import { type Client, Code, ConnectError } from "@connectrpc/connect";
import * as grpc from "@grpc/grpc-js";
import {
  type ClaimTasksRequestSchema,
  QueueService,
  type WatchTasksRequestSchema,
} from "../gen/agentstore/v1/queue_service_pb.ts";
import {
  type NewQueueTaskSchema,
  type QueueStats,
  type QueueTask,
  QueueTaskState,
} from "../gen/agentstore/v1/queue_task_pb.ts";
import type { App } from "../src/app.ts";
import { eventually, range, rejectsWith } from "./helpers/assertions.ts";
import { serviceClient } from "./helpers/connect.ts";
import { type Backend, backends, postgres, type TestDatabase } from "./helpers/databases.ts";
import { errorReason, type GrpcError, grpcQueueService, struct, unary, unstruct } from "./helpers/grpc-js.ts";
import {
  API_KEYS_ENV,
  KEYS,
  type ServerProcess,
  spawnServer,
  startServer,
  type TestServer,
} from "./helpers/servers.ts";

/**
 * QueueService over real gRPC, on PGlite and on PostgreSQL. The proto comments of
 * queue_service.proto and queue_task.proto are the contract these tests hold the server to.
 */

/** The ErrorInfo reasons the tests depend on, in one place. */
const REASON = {
  taskNotFound: "QUEUE_TASK_NOT_FOUND",
  notHolder: "NOT_TASK_HOLDER",
  terminal: "TASK_TERMINAL",
  notPending: "TASK_NOT_PENDING",
  keyReused: "IDEMPOTENCY_KEY_REUSED",
  scheduleNotFound: "SCHEDULE_NOT_FOUND",
  scheduleExists: "SCHEDULE_EXISTS",
  invalidCron: "INVALID_CRON",
  invalidPageToken: "INVALID_PAGE_TOKEN",
} as const;

/** The last_error the sweeper writes. */
const LEASE_EXPIRED = "lease expired";
const TIMED_OUT = "timed out";

/** Sweeps and schedule ticks every 100 ms, so that expiries and ticks are seen quickly. */
const QUEUE_ENV = { AGENTSTORE_QUEUE_SWEEP_MS: "100", AGENTSTORE_SCHEDULE_TICK_MS: "100" };

/** Clock slack between the server's timestamps (JS and database clocks of one machine). */
const SLACK_MS = 50;

// ---------------------------------------------------------------------------------------------
// Clients

type Queue = Client<typeof QueueService>;

interface QueueClient {
  readonly q: Queue;
  close(): void;
}

/** A Connect client of QueueService, on a connection of its own, with the API key as a bearer token. */
function queueClient(baseUrl: string, apiKey?: string) {
  const { client, close } = serviceClient(QueueService, baseUrl, apiKey);
  return { q: client, close };
}

// ---------------------------------------------------------------------------------------------
// Small helpers

type NewTask = MessageInitShape<typeof NewQueueTaskSchema>;
type ClaimRequest = MessageInitShape<typeof ClaimTasksRequestSchema>;

const ms = (n: number): Duration => durationFromMs(n);
const tsMs = (t: Timestamp | undefined): number => (t === undefined ? Number.NaN : timestampMs(t));
const newQueue = (prefix = "q") => `${prefix}-${randomUUID()}`;

function must<T>(value: T | undefined, what = "value"): T {
  if (value === undefined) assert.fail(`missing ${what}`);
  return value;
}

/** "PENDING" for QueueTaskState.PENDING: the keys QueueStats.by_state uses. */
const STATE_NAME: Record<number, string> = Object.fromEntries(
  Object.entries(QueueTaskState).map(([name, value]) => [value, name]),
);
const UNFINISHED = new Set<QueueTaskState>([
  QueueTaskState.PENDING,
  QueueTaskState.CLAIMED,
  QueueTaskState.RUNNING,
]);

const strictlyIncreasing = (values: bigint[]) => values.every((v, i) => i === 0 || v > (values[i - 1] ?? 0n));

async function enqueue(q: Queue, task: NewTask): Promise<QueueTask> {
  return must((await q.enqueueTask({ task })).task, "task");
}

async function getTask(q: Queue, taskId: string, readerId = ""): Promise<QueueTask> {
  return must((await q.getQueueTask({ taskId, readerId })).task, "task");
}

/**
 * Runs a call and notes when it was sent and when it answered: what the server did happened in
 * between. (Server timestamps such as update_time may be a transaction's start, taken before a lock
 * wait, so they bound nothing on a loaded machine.)
 */
async function timed<T>(call: () => Promise<T>): Promise<{ value: T; sentAt: number; answeredAt: number }> {
  const sentAt = Date.now();
  const value = await call();
  return { value, sentAt, answeredAt: Date.now() };
}

/** When a claim took place, from the lease it granted: the lease runs from then. */
const claimMoment = (t: QueueTask | undefined, leaseMs: number) => tsMs(t?.leaseExpireTime) - leaseMs;

/**
 * A retry's run_time is the failure's moment plus a delay of full/2..full (the jitter takes up to
 * half): the failure happened between the call and its answer.
 */
function assertRetryDelay(
  task: QueueTask,
  call: { sentAt: number; answeredAt: number },
  full: number,
  what: string,
) {
  const runTime = tsMs(task.runTime);
  assert.ok(
    runTime >= call.sentAt + full / 2 - SLACK_MS && runTime <= call.answeredAt + full + SLACK_MS,
    `${what}: due ${runTime - call.sentAt} ms after the call was sent (answered after ` +
      `${call.answeredAt - call.sentAt} ms), expected ${full / 2}..${full} ms`,
  );
}

/** Claims without waiting; the tasks claimed. */
async function claim(q: Queue, request: ClaimRequest): Promise<QueueTask[]> {
  return (await q.claimTasks(request)).tasks;
}

/** Every task of a list, page by page. */
async function listAll(
  q: Queue,
  request: {
    queue?: string;
    state?: QueueTaskState;
    lane?: string;
    updatedAfterVersion?: bigint;
    readerId?: string;
  },
  pageSize = 500,
): Promise<QueueTask[]> {
  const tasks: QueueTask[] = [];
  let pageToken = "";
  do {
    const page = await q.listQueueTasks({ ...request, pageSize, pageToken });
    tasks.push(...page.tasks);
    pageToken = page.nextPageToken;
  } while (pageToken !== "");
  return tasks;
}

/**
 * Claims with `wait` until the task is claimed, checking that no claim happened before it was due:
 * the claim's moment (its lease's end less the lease) is not before `dueMs`.
 */
async function claimWhenDue(
  q: Queue,
  workerId: string,
  queue: string,
  taskId: string,
  dueMs: number,
  deadlineMs = 30_000,
): Promise<QueueTask> {
  const deadline = Date.now() + deadlineMs;
  while (Date.now() < deadline) {
    const tasks = await claim(q, { workerId, queue, wait: ms(5_000), lease: ms(60_000) });
    for (const t of tasks) {
      assert.equal(t.taskId, taskId, "only the task under test is in this queue");
      assert.ok(
        claimMoment(t, 60_000) >= dueMs - SLACK_MS,
        `claimed at ${claimMoment(t, 60_000)}, before it was due at ${dueMs}`,
      );
      return t;
    }
  }
  assert.fail(`task ${taskId} was not claimed within ${deadlineMs} ms of waiting`);
}

/** The gauge of claims waiting on this replica, if the queue module publishes one. */
function queueWaitingClaims(app: App): number | undefined {
  const gauges = app.gauges();
  const key = Object.keys(gauges).find((k) => /queue|task/i.test(k) && /wait/i.test(k));
  return key === undefined ? undefined : gauges[key];
}

interface TaskWatcher {
  /** Every message received, in arrival order. */
  seen: Array<{ taskId: string; version: bigint; state: QueueTaskState; task: QueueTask }>;
  /** The latest task received per id. */
  latest: Map<string, QueueTask>;
  /** Throws the stream's error if it ended by itself (it never should). */
  check(): void;
  stop(): Promise<void>;
}

/** Watches tasks in the background, recording everything. */
function watchTasks(q: Queue, request: MessageInitShape<typeof WatchTasksRequestSchema>): TaskWatcher {
  const controller = new AbortController();
  const seen: TaskWatcher["seen"] = [];
  const latest = new Map<string, QueueTask>();
  let failure: unknown;
  let ended = false;
  const done = (async () => {
    for await (const { task, version } of q.watchTasks(request, { signal: controller.signal })) {
      if (task === undefined) continue;
      seen.push({ taskId: task.taskId, version, state: task.state, task });
      latest.set(task.taskId, task);
    }
    ended = true;
  })().catch((err: unknown) => {
    if (!controller.signal.aborted) failure = err;
  });
  return {
    seen,
    latest,
    check() {
      if (failure !== undefined) throw failure;
      if (ended) assert.fail("WatchTasks ended by itself");
    },
    async stop() {
      controller.abort();
      await done;
    },
  };
}

/** Counts of a list of tasks the way QueueStats reports them. */
function countsOf(tasks: QueueTask[], nowMs: number) {
  const byState: Record<string, bigint> = {};
  const byLane: Record<string, bigint> = {};
  let due = 0n;
  let oldestDue = Number.POSITIVE_INFINITY;
  for (const t of tasks) {
    const name = STATE_NAME[t.state] ?? String(t.state);
    byState[name] = (byState[name] ?? 0n) + 1n;
    byLane[t.lane] = (byLane[t.lane] ?? 0n) + 1n;
    if (t.state === QueueTaskState.PENDING && tsMs(t.runTime) <= nowMs) {
      due++;
      oldestDue = Math.min(oldestDue, tsMs(t.runTime));
    }
  }
  return { total: BigInt(tasks.length), byState, byLane, due, oldestDue };
}

const plain = (m: Record<string, bigint>) => Object.fromEntries(Object.entries(m).sort());

function assertStatsMatch(stats: QueueStats, tasks: QueueTask[], what: string) {
  const generated = tsMs(stats.generateTime);
  assert.ok(Number.isFinite(generated), `${what}: generate_time is set`);
  const expected = countsOf(tasks, generated);
  assert.equal(stats.total, expected.total, `${what}: total`);
  assert.deepEqual(plain(stats.byState), plain(expected.byState), `${what}: by_state`);
  assert.deepEqual(plain(stats.byLane), plain(expected.byLane), `${what}: by_lane`);
  assert.equal(stats.due, expected.due, `${what}: due`);
  if (expected.due === 0n) {
    assert.equal(stats.oldestDueAge, undefined, `${what}: no oldest_due_age without due tasks`);
  } else {
    const age = durationMs(must(stats.oldestDueAge, "oldest_due_age"));
    assert.ok(
      Math.abs(age - (generated - expected.oldestDue)) <= 1_000,
      `${what}: oldest_due_age ${age} ms, expected about ${generated - expected.oldestDue} ms`,
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Fixture: one server per describe block, with a QueueService client.

interface QueueFixture {
  readonly server: TestServer;
  readonly q: Queue;
}

function useQueueServer(backend: Backend, env: Record<string, string> = {}): QueueFixture {
  let db: TestDatabase | undefined;
  let server: TestServer | undefined;
  let client: QueueClient | undefined;
  before(async () => {
    db = await backend.create();
    server = await startServer(db, { ...QUEUE_ENV, ...env });
    client = queueClient(server.url);
  });
  after(async () => {
    client?.close();
    await server?.close();
    await db?.drop();
  });
  return {
    get server() {
      return must(server, "server (it starts in before())");
    },
    get q() {
      return must(client, "client (it opens in before())").q;
    },
  };
}

// ---------------------------------------------------------------------------------------------

for (const backend of await backends()) {
  describe(`QueueService on ${backend.name}`, { skip: backend.skip }, () => {
    const fx = useQueueServer(backend);

    it("enqueues a task with its defaults, gets it, and an unknown task is NOT_FOUND", async () => {
      const queue = newQueue();
      const before = Date.now();
      const { task, created } = await fx.q.enqueueTask({
        task: { queue, lane: "l1", priority: 3, payload: { prompt: "fix it", n: 1 } },
      });
      assert.equal(created, true);
      const t = must(task);
      assert.match(t.taskId, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
      assert.equal(t.queue, queue);
      assert.equal(t.lane, "l1");
      assert.equal(t.priority, 3);
      assert.deepEqual(t.payload, { prompt: "fix it", n: 1 });
      assert.equal(t.state, QueueTaskState.PENDING);
      assert.equal(t.attempts, 0);
      assert.equal(t.maxAttempts, 5, "0 means 5");
      assert.equal(t.workerId, "");
      assert.equal(t.serial, false);
      assert.ok(t.version > 0n);
      assert.ok(tsMs(t.createTime) >= before - 1_000);
      assert.ok(Math.abs(tsMs(t.runTime) - tsMs(t.createTime)) <= 1_000, "unset run_time means now");
      assert.equal(t.finishTime, undefined);

      const got = await getTask(fx.q, t.taskId);
      assert.equal(got.taskId, t.taskId);
      assert.equal(got.version, t.version);
      assert.deepEqual(got.payload, t.payload);
      assert.equal(got.readVersion, 0n, "no reader named");

      await rejectsWith(fx.q.getQueueTask({ taskId: randomUUID() }), Code.NotFound, REASON.taskNotFound);
      await rejectsWith(fx.q.enqueueTask({ task: { queue: "" } }), Code.InvalidArgument);
      await rejectsWith(fx.q.claimTasks({ workerId: "w", queue, maxTasks: 101 }), Code.InvalidArgument);
      // Payloads, results and schedule templates are bounded like a run's input (1 MiB by default),
      // and a refused one leaves nothing behind.
      const big = { blob: "x".repeat(1_100_000) };
      await rejectsWith(
        fx.q.enqueueTask({ task: { queue, payload: big } }),
        Code.ResourceExhausted,
        "PAYLOAD_TOO_LARGE",
      );
      await rejectsWith(
        fx.q.createSchedule({ schedule: { queue, cron: "* * * * *", template: { payload: big } } }),
        Code.ResourceExhausted,
        "PAYLOAD_TOO_LARGE",
      );
      const [held] = (await fx.q.claimTasks({ workerId: "w", queue })).tasks;
      await rejectsWith(
        fx.q.completeTask({ taskId: must(held).taskId, workerId: "w", result: big }),
        Code.ResourceExhausted,
        "PAYLOAD_TOO_LARGE",
      );
      assert.equal(
        (await fx.q.getQueueTask({ taskId: must(held).taskId })).task?.state,
        QueueTaskState.CLAIMED,
      );
      assert.equal((await fx.q.listSchedules({ queue })).schedules.length, 0);
    });

    it("idempotent enqueue: same key and payload gives the first task, another payload ALREADY_EXISTS, replace updates a pending task", async () => {
      const queue = newQueue();
      const key = `key-${randomUUID()}`;
      const first = await fx.q.enqueueTask({ task: { queue, idempotencyKey: key, payload: { a: 1 } } });
      assert.equal(first.created, true);
      const firstTask = must(first.task);
      assert.equal(firstTask.idempotencyKey, key);

      const again = await fx.q.enqueueTask({ task: { queue, idempotencyKey: key, payload: { a: 1 } } });
      assert.equal(again.created, false);
      assert.equal(again.task?.taskId, firstTask.taskId);
      assert.equal(again.task?.version, firstTask.version, "a repeat changes nothing");

      await rejectsWith(
        fx.q.enqueueTask({ task: { queue, idempotencyKey: key, payload: { a: 2 } } }),
        Code.AlreadyExists,
        REASON.keyReused,
      );
      assert.deepEqual(
        (await getTask(fx.q, firstTask.taskId)).payload,
        { a: 1 },
        "the refused call changed nothing",
      );

      // The key is unique in its queue only.
      const elsewhere = await fx.q.enqueueTask({
        task: { queue: `${queue}-other`, idempotencyKey: key, payload: { a: 2 } },
      });
      assert.equal(elsewhere.created, true);
      assert.notEqual(elsewhere.task?.taskId, firstTask.taskId);

      const runAt = Date.now() + 3_600_000;
      const replaced = await fx.q.enqueueTask({
        task: {
          queue,
          idempotencyKey: key,
          replace: true,
          payload: { a: 3 },
          lane: "l2",
          priority: 7,
          runTime: timestampFromMs(runAt),
          maxAttempts: 9,
          timeout: ms(60_000),
          backoff: { initialDelay: ms(2_000), maxDelay: ms(10_000) },
        },
      });
      assert.equal(replaced.created, false, "a replace creates nothing");
      const r = must(replaced.task);
      assert.equal(r.taskId, firstTask.taskId);
      assert.deepEqual(r.payload, { a: 3 });
      assert.equal(r.lane, "l2");
      assert.equal(r.priority, 7);
      assert.equal(tsMs(r.runTime), runAt);
      assert.equal(r.maxAttempts, 9);
      assert.equal(durationMs(must(r.timeout)), 60_000);
      assert.equal(durationMs(must(r.backoff?.initialDelay)), 2_000);
      assert.equal(r.state, QueueTaskState.PENDING);
      assert.ok(r.version > firstTask.version, "a replace is a change");
      assert.deepEqual((await getTask(fx.q, r.taskId)).payload, { a: 3 });

      // Due now again, claimed: a replace is refused from then on, a plain repeat still answers.
      await fx.q.enqueueTask({
        task: { queue, idempotencyKey: key, replace: true, payload: { a: 4 } },
      });
      const [held] = await claim(fx.q, { workerId: "w1", queue });
      assert.equal(held?.taskId, firstTask.taskId);
      await rejectsWith(
        fx.q.enqueueTask({ task: { queue, idempotencyKey: key, replace: true, payload: { a: 5 } } }),
        Code.FailedPrecondition,
        REASON.notPending,
      );
      const repeat = await fx.q.enqueueTask({ task: { queue, idempotencyKey: key, payload: { a: 4 } } });
      assert.equal(repeat.created, false);
      assert.equal(repeat.task?.state, QueueTaskState.CLAIMED);
      await fx.q.completeTask({ taskId: firstTask.taskId, workerId: "w1" });
      await rejectsWith(
        fx.q.enqueueTask({ task: { queue, idempotencyKey: key, replace: true, payload: { a: 6 } } }),
        Code.FailedPrecondition,
        REASON.notPending,
      );
      assert.equal((await getTask(fx.q, firstTask.taskId)).state, QueueTaskState.COMPLETED);
    });

    it("EnqueueTasks: tasks in request order with created flags, all or none", async () => {
      const queue = newQueue();
      const key = `key-${randomUUID()}`;
      const existing = await enqueue(fx.q, { queue, idempotencyKey: key, payload: { v: 1 } });
      const batch = await fx.q.enqueueTasks({
        tasks: [
          { queue, payload: { n: 1 } },
          { queue, idempotencyKey: key, payload: { v: 1 } },
          { queue, payload: { n: 3 }, lane: "x" },
        ],
      });
      assert.deepEqual(batch.created, [true, false, true]);
      assert.deepEqual(
        batch.tasks.map((t) => t.payload),
        [{ n: 1 }, { v: 1 }, { n: 3 }],
      );
      assert.equal(batch.tasks[1]?.taskId, existing.taskId);
      assert.equal(batch.tasks[2]?.lane, "x");

      const before = (await listAll(fx.q, { queue })).length;
      await rejectsWith(
        fx.q.enqueueTasks({
          tasks: [
            { queue, payload: { n: 4 } },
            { queue, payload: { n: 5 } },
            { queue, idempotencyKey: key, payload: { v: 2 } },
          ],
        }),
        Code.AlreadyExists,
        REASON.keyReused,
      );
      assert.equal((await listAll(fx.q, { queue })).length, before, "a refused batch stores none");
      await rejectsWith(
        fx.q.enqueueTasks({ tasks: range(1, 1001).map(() => ({ queue })) }),
        Code.InvalidArgument,
      );
    });

    it("ClaimTasks: highest priority first, then due longest; max_tasks, lanes, and a lease", async () => {
      const queue = newQueue();
      const now = Date.now();
      const older = await enqueue(fx.q, { queue, runTime: timestampFromMs(now - 5_000) });
      const newer = await enqueue(fx.q, { queue, runTime: timestampFromMs(now - 3_000) });
      const urgent = await enqueue(fx.q, { queue, priority: 5 });
      const middle = await enqueue(fx.q, { queue, priority: 1, lane: "b" });
      const laterUrgent = await enqueue(fx.q, {
        queue,
        priority: 9,
        runTime: timestampFromMs(now + 3_600_000),
      });

      const first = await timed(() => claim(fx.q, { workerId: "w1", queue, lease: ms(30_000) }));
      const one = first.value;
      assert.deepEqual(
        one.map((t) => t.taskId),
        [urgent.taskId],
        "max_tasks 0 means 1; a task not due is never claimed",
      );
      const [c] = one;
      assert.equal(c?.state, QueueTaskState.CLAIMED);
      assert.equal(c?.workerId, "w1");
      assert.equal(c?.attempts, 1);
      const leaseEnd = tsMs(c?.leaseExpireTime);
      assert.ok(
        leaseEnd >= first.sentAt + 30_000 - SLACK_MS && leaseEnd <= first.answeredAt + 30_000 + SLACK_MS,
        `a lease of 30 s from the claim: it ends ${leaseEnd - first.sentAt} ms after the call`,
      );

      const onlyB = await claim(fx.q, { workerId: "w2", queue, lanes: ["b", "c"], maxTasks: 10 });
      assert.deepEqual(
        onlyB.map((t) => t.taskId),
        [middle.taskId],
      );

      const rest = await claim(fx.q, { workerId: "w3", queue, maxTasks: 10 });
      assert.deepEqual(
        rest.map((t) => t.taskId),
        [older.taskId, newer.taskId],
        "most urgent first: due longest",
      );
      assert.deepEqual(
        await claim(fx.q, { workerId: "w4", queue, maxTasks: 10 }),
        [],
        "nothing left that is due",
      );
      assert.equal((await getTask(fx.q, laterUrgent.taskId)).state, QueueTaskState.PENDING);
      const defaultLease = await enqueue(fx.q, { queue });
      const byDefault = await timed(() => claim(fx.q, { workerId: "w5", queue }));
      const [d] = byDefault.value;
      assert.equal(d?.taskId, defaultLease.taskId);
      const defaultEnd = tsMs(d?.leaseExpireTime);
      assert.ok(
        defaultEnd >= byDefault.sentAt + 30_000 - SLACK_MS &&
          defaultEnd <= byDefault.answeredAt + 30_000 + SLACK_MS,
        `unset lease means 30 s: it ends ${defaultEnd - byDefault.sentAt} ms after the call`,
      );
    });

    it("a delayed task is not claimed before its run_time; a waiting claim gets it when due", async () => {
      const queue = newQueue();
      const dueMs = Date.now() + 1_500;
      const t = await enqueue(fx.q, { queue, runTime: timestampFromMs(dueMs), priority: 9 });
      assert.equal(tsMs(t.runTime), dueMs);
      const stats = must((await fx.q.getQueueStats({ queue })).stats);
      if (Date.now() < dueMs - 200) {
        assert.equal(stats.due, 0n);
        assert.equal(stats.byState.PENDING, 1n);
      }
      const claimed = await claimWhenDue(fx.q, "w1", queue, t.taskId, dueMs);
      assert.equal(claimed.attempts, 1);
      assert.equal(claimed.state, QueueTaskState.CLAIMED);
    });

    it("a waiting claim answers empty when its wait ends, and is woken by an enqueue", async () => {
      const queue = newQueue();
      const started = Date.now();
      const nothing = await claim(fx.q, { workerId: "w1", queue, wait: ms(1_000) });
      assert.deepEqual(nothing, []);
      assert.ok(Date.now() - started >= 900, "it waited");

      const baseline = queueWaitingClaims(fx.server.app) ?? 0;
      const waitStart = Date.now();
      const waiting = fx.q.claimTasks({ workerId: "w1", queue, wait: ms(120_000), maxTasks: 5 });
      if (queueWaitingClaims(fx.server.app) !== undefined) {
        await eventually(() => assert.equal(queueWaitingClaims(fx.server.app), baseline + 1));
      }
      const t = await enqueue(fx.q, { queue, payload: { wake: true } });
      const { tasks } = await waiting;
      assert.deepEqual(
        tasks.map((x) => x.taskId),
        [t.taskId],
      );
      assert.ok(Date.now() - waitStart < 60_000, "woken by the enqueue, not by the end of its wait");
    });

    it("RenewTaskLease extends only the holder's lease; others are NOT_TASK_HOLDER", async () => {
      const queue = newQueue();
      const t = await enqueue(fx.q, { queue });
      const [held] = await claim(fx.q, { workerId: "w1", queue, lease: ms(30_000) });
      assert.equal(held?.taskId, t.taskId);
      assert.deepEqual(await claim(fx.q, { workerId: "w2", queue }), [], "held: nobody else gets it");

      const notHolder = (call: Promise<unknown>) =>
        rejectsWith(call, Code.FailedPrecondition, REASON.notHolder);
      await notHolder(fx.q.renewTaskLease({ taskId: t.taskId, workerId: "w2", lease: ms(60_000) }));
      await notHolder(fx.q.completeTask({ taskId: t.taskId, workerId: "w2" }));
      await notHolder(fx.q.failTask({ taskId: t.taskId, workerId: "w2", error: "x" }));
      await notHolder(fx.q.updateTaskAttempt({ taskId: t.taskId, workerId: "w2", sessionPath: "/x" }));
      await notHolder(fx.q.completeTasks({ workerId: "w2", completions: [{ taskId: t.taskId }] }));

      const renewed = must(
        (await fx.q.renewTaskLease({ taskId: t.taskId, workerId: "w1", lease: ms(600_000) })).task,
      );
      assert.equal(renewed.workerId, "w1");
      assert.equal(renewed.state, QueueTaskState.CLAIMED);
      assert.equal(renewed.attempts, 1, "a renewal is no claim");
      const leaseMs = tsMs(renewed.leaseExpireTime) - Date.now();
      assert.ok(
        leaseMs > 500_000 && leaseMs <= 600_000 + SLACK_MS,
        `renewed for about 600 s, ${leaseMs} ms left`,
      );
      const after = await getTask(fx.q, t.taskId);
      assert.equal(tsMs(after.leaseExpireTime), tsMs(renewed.leaseExpireTime));

      const pending = await enqueue(fx.q, { queue: newQueue() });
      await notHolder(fx.q.renewTaskLease({ taskId: pending.taskId, workerId: "w1" }));
      await notHolder(fx.q.completeTask({ taskId: pending.taskId, workerId: "w1" }));
      await rejectsWith(
        fx.q.renewTaskLease({ taskId: randomUUID(), workerId: "w1" }),
        Code.NotFound,
        REASON.taskNotFound,
      );
      await fx.q.completeTask({ taskId: t.taskId, workerId: "w1" });
    });

    it("a lease that runs out: the task goes back to PENDING ('lease expired'), another worker gets it with attempts 2, the first is fenced", async () => {
      const queue = newQueue();
      const t = await enqueue(fx.q, { queue, maxAttempts: 3 });
      const [first] = await claim(fx.q, { workerId: "w1", queue, lease: ms(1_000) });
      assert.equal(first?.taskId, t.taskId);
      const expiry = tsMs(first?.leaseExpireTime);

      await eventually(
        async () => assert.equal((await getTask(fx.q, t.taskId)).state, QueueTaskState.PENDING),
        15_000,
      );
      const requeued = await getTask(fx.q, t.taskId);
      assert.equal(requeued.lastError, LEASE_EXPIRED);
      assert.equal(requeued.attempts, 1, "the lost attempt counts");
      assert.equal(requeued.workerId, "");
      // update_time may be the sweep transaction's start, a little before the sweep itself.
      assert.ok(tsMs(requeued.updateTime) >= expiry - 500, "not taken before the lease ended");

      const [second] = await claim(fx.q, { workerId: "w2", queue, wait: ms(30_000), lease: ms(60_000) });
      assert.equal(second?.taskId, t.taskId);
      assert.equal(second?.attempts, 2);
      assert.equal(second?.workerId, "w2");

      const notHolder = (call: Promise<unknown>) =>
        rejectsWith(call, Code.FailedPrecondition, REASON.notHolder);
      await notHolder(fx.q.completeTask({ taskId: t.taskId, workerId: "w1" }));
      await notHolder(fx.q.renewTaskLease({ taskId: t.taskId, workerId: "w1" }));
      await notHolder(fx.q.failTask({ taskId: t.taskId, workerId: "w1", error: "late" }));
      const done = await fx.q.completeTask({ taskId: t.taskId, workerId: "w2", result: { ok: true } });
      assert.equal(done.changed, true);
      assert.equal(done.task?.state, QueueTaskState.COMPLETED);
      assert.equal(done.task?.attempts, 2);
    });

    it("a lease that runs out on the last attempt makes the task DEAD", async () => {
      const queue = newQueue();
      const t = await enqueue(fx.q, { queue, maxAttempts: 1 });
      await claim(fx.q, { workerId: "w1", queue, lease: ms(1_000) });
      await eventually(
        async () => assert.equal((await getTask(fx.q, t.taskId)).state, QueueTaskState.DEAD),
        15_000,
      );
      const dead = await getTask(fx.q, t.taskId);
      assert.equal(dead.lastError, LEASE_EXPIRED);
      assert.equal(dead.attempts, 1);
      assert.ok(dead.finishTime !== undefined, "DEAD is terminal");
      const { tasks } = await fx.q.listDeadTasks({ queue });
      assert.deepEqual(
        tasks.map((x) => x.taskId),
        [t.taskId],
      );
    });

    it("a timed-out attempt: the lease never reaches past the timeout, renewing does not help, the task is retried then DEAD ('timed out')", async () => {
      const queue = newQueue();
      const t = await enqueue(fx.q, { queue, timeout: ms(1_000), maxAttempts: 2 });
      assert.equal(durationMs(must(t.timeout)), 1_000);
      const first = await timed(() => claim(fx.q, { workerId: "w1", queue, lease: ms(30_000) }));
      const [held] = first.value;
      assert.equal(held?.taskId, t.taskId);
      // The attempt started before the claim answered; its lease ends with its timeout.
      const start = first.answeredAt;
      assert.ok(
        tsMs(held?.leaseExpireTime) <= start + 1_000 + SLACK_MS,
        "the claim's lease ends with the timeout",
      );
      const renewed = await fx.q.renewTaskLease({ taskId: t.taskId, workerId: "w1", lease: ms(60_000) }).then(
        (r) => r.task,
        () => undefined,
      );
      if (renewed !== undefined) {
        assert.ok(
          tsMs(renewed.leaseExpireTime) <= start + 1_000 + SLACK_MS,
          "a renewal stops at the timeout",
        );
      }

      // The worker keeps renewing; the task is taken from it anyway.
      const renewing = async (workerId: string) => {
        await fx.q.renewTaskLease({ taskId: t.taskId, workerId, lease: ms(60_000) }).catch((err: unknown) => {
          if (ConnectError.from(err).code !== Code.FailedPrecondition) throw err;
        });
      };
      await eventually(async () => {
        await renewing("w1");
        assert.equal((await getTask(fx.q, t.taskId)).state, QueueTaskState.PENDING);
      }, 15_000);
      const retried = await getTask(fx.q, t.taskId);
      assert.equal(retried.lastError, TIMED_OUT);
      assert.equal(retried.attempts, 1);
      await rejectsWith(
        fx.q.renewTaskLease({ taskId: t.taskId, workerId: "w1" }),
        Code.FailedPrecondition,
        REASON.notHolder,
      );

      const second = await timed(() =>
        claim(fx.q, { workerId: "w2", queue, wait: ms(30_000), lease: ms(30_000) }),
      );
      const [again] = second.value;
      assert.equal(again?.taskId, t.taskId);
      assert.equal(again?.attempts, 2);
      const secondStart = second.answeredAt;
      assert.ok(
        tsMs(again?.leaseExpireTime) <= secondStart + 1_000 + SLACK_MS,
        "each attempt has its own timeout",
      );
      await eventually(async () => {
        await renewing("w2");
        assert.equal((await getTask(fx.q, t.taskId)).state, QueueTaskState.DEAD);
      }, 15_000);
      const dead = await getTask(fx.q, t.taskId);
      assert.equal(dead.lastError, TIMED_OUT);
      assert.equal(dead.attempts, 2);
    });

    it("FailTask retries after the backoff (not claimable before), then DEAD when attempts run out; retry_delay and no_retry", async () => {
      const queue = newQueue();
      const t = await enqueue(fx.q, { queue, maxAttempts: 3, payload: { job: 1 } });
      let runTime = tsMs(t.runTime);
      for (const attempt of [1, 2]) {
        const held = await claimWhenDue(fx.q, `w${attempt}`, queue, t.taskId, runTime);
        assert.equal(held.attempts, attempt);
        const call = await timed(() =>
          fx.q.failTask({ taskId: t.taskId, workerId: `w${attempt}`, error: `boom ${attempt}` }),
        );
        const failed = call.value;
        assert.equal(failed.changed, true);
        const f = must(failed.task);
        assert.equal(f.state, QueueTaskState.PENDING, "retried while attempts remain");
        assert.equal(f.attempts, attempt, "attempts are kept");
        assert.equal(f.lastError, `boom ${attempt}`);
        assert.equal(f.workerId, "");
        // Default backoff: 1 s initial, doubling, less up to half at random.
        const full = Math.min(3_600_000, 1_000 * 2 ** (attempt - 1));
        assertRetryDelay(f, call, full, `retry ${attempt}`);
        runTime = tsMs(f.runTime);
        // Claimed at once it must not be (unless the machine stalled until it was due).
        for (const early of await claim(fx.q, { workerId: "early", queue, lease: ms(60_000) })) {
          assert.ok(
            claimMoment(early, 60_000) >= runTime - SLACK_MS,
            "a retried task is not claimed before its run_time",
          );
          await fx.q.failTask({ taskId: early.taskId, workerId: "early", error: "x", retryDelay: ms(0) });
          assert.fail("the machine stalled past the backoff; the test cannot tell");
        }
      }
      const last = await claimWhenDue(fx.q, "w3", queue, t.taskId, runTime);
      assert.equal(last.attempts, 3);
      const died = await fx.q.failTask({ taskId: t.taskId, workerId: "w3", error: "boom 3" });
      assert.equal(died.changed, true);
      assert.equal(died.task?.state, QueueTaskState.DEAD, "out of attempts");
      assert.equal(died.task?.lastError, "boom 3");
      assert.ok(died.task?.finishTime !== undefined);
      const again = await fx.q.failTask({ taskId: t.taskId, workerId: "w3", error: "again" });
      assert.equal(again.changed, false, "the first terminal state wins");
      assert.equal(again.task?.state, QueueTaskState.DEAD);
      assert.equal(again.task?.lastError, "boom 3");

      // retry_delay 0: due again at once.
      const quick = await enqueue(fx.q, { queue: `${queue}-quick`, maxAttempts: 5 });
      await claim(fx.q, { workerId: "w1", queue: quick.queue });
      const quickFail = await timed(() =>
        fx.q.failTask({ taskId: quick.taskId, workerId: "w1", error: "e", retryDelay: ms(0) }),
      );
      const q1 = must(quickFail.value.task);
      assert.ok(tsMs(q1.runTime) <= quickFail.answeredAt + SLACK_MS, "retry_delay 0 retries at once");
      const [reclaimed] = await claim(fx.q, { workerId: "w2", queue: quick.queue });
      assert.equal(reclaimed?.taskId, quick.taskId);
      assert.equal(reclaimed?.attempts, 2);
      const lateFail = await timed(() =>
        fx.q.failTask({ taskId: quick.taskId, workerId: "w2", error: "later", retryDelay: ms(3_600_000) }),
      );
      const q2 = must(lateFail.value.task);
      assert.ok(
        tsMs(q2.runTime) >= lateFail.sentAt + 3_600_000 - SLACK_MS &&
          tsMs(q2.runTime) <= lateFail.answeredAt + 3_600_000 + SLACK_MS,
        "retry_delay overrides the backoff, without jitter",
      );

      // no_retry: DEAD at once, attempts left or not.
      const fatal = await enqueue(fx.q, { queue: `${queue}-fatal`, maxAttempts: 5 });
      await claim(fx.q, { workerId: "w1", queue: fatal.queue });
      const gone = await fx.q.failTask({
        taskId: fatal.taskId,
        workerId: "w1",
        error: "fatal",
        noRetry: true,
      });
      assert.equal(gone.task?.state, QueueTaskState.DEAD);
      assert.equal(gone.task?.attempts, 1);
    });

    it("backoff doubles per retry up to max_delay, less up to half at random", async () => {
      const queue = newQueue();
      const initial = 400;
      const max = 1_000;
      const t = await enqueue(fx.q, {
        queue,
        maxAttempts: 6,
        backoff: { initialDelay: ms(initial), maxDelay: ms(max) },
      });
      let runTime = tsMs(t.runTime);
      const delays: number[] = [];
      for (const n of range(1, 4)) {
        const held = await claimWhenDue(fx.q, "w", queue, t.taskId, runTime);
        assert.equal(held.attempts, n);
        const call = await timed(() => fx.q.failTask({ taskId: t.taskId, workerId: "w", error: `e${n}` }));
        const f = must(call.value.task);
        delays.push(tsMs(f.runTime) - call.sentAt);
        const full = Math.min(max, initial * 2 ** (n - 1));
        assertRetryDelay(f, call, full, `retry ${n} (delays from the calls: ${delays.join(", ")} ms)`);
        runTime = tsMs(f.runTime);
      }
    });

    it("dead tasks: ListDeadTasks oldest death first and paged; RedriveTasks by id and by queue resets attempts", async () => {
      const queue = newQueue();
      const tasks = (
        await fx.q.enqueueTasks({
          tasks: range(1, 3).map((n) => ({ queue, priority: 10 - n, maxAttempts: 2, payload: { n } })),
        })
      ).tasks;
      for (const t of tasks) {
        const [held] = await claim(fx.q, { workerId: "w", queue });
        assert.equal(held?.taskId, t.taskId, "claimed in priority order");
        await fx.q.failTask({ taskId: t.taskId, workerId: "w", error: `dead ${t.priority}`, noRetry: true });
      }
      const alive = await enqueue(fx.q, { queue, priority: -1 });
      const ids = tasks.map((t) => t.taskId);
      const { tasks: dead } = await fx.q.listDeadTasks({ queue });
      assert.deepEqual(
        dead.map((t) => t.taskId),
        ids,
        "oldest death first",
      );
      assert.ok(dead.every((t) => t.state === QueueTaskState.DEAD));
      const page1 = await fx.q.listDeadTasks({ queue, pageSize: 2 });
      assert.notEqual(page1.nextPageToken, "");
      const page2 = await fx.q.listDeadTasks({ queue, pageSize: 2, pageToken: page1.nextPageToken });
      assert.deepEqual(
        [...page1.tasks, ...page2.tasks].map((t) => t.taskId),
        ids,
      );
      assert.equal(page2.nextPageToken, "");
      const everyQueue = await fx.q.listDeadTasks({ pageSize: 500 });
      for (const id of ids)
        assert.ok(
          everyQueue.tasks.some((t) => t.taskId === id),
          "empty queue: every queue",
        );
      assert.deepEqual((await fx.q.listDeadTasks({ queue: `${queue}-none` })).tasks, []);

      const byId = await fx.q.redriveTasks({ taskIds: [ids[1] ?? "", alive.taskId] });
      assert.equal(byId.redrivenCount, 1n, "only DEAD tasks are redriven");
      const redriven = await getTask(fx.q, ids[1] ?? "");
      assert.equal(redriven.state, QueueTaskState.PENDING);
      assert.equal(redriven.attempts, 0, "attempts reset");
      assert.equal(redriven.finishTime, undefined);
      assert.equal((await getTask(fx.q, alive.taskId)).state, QueueTaskState.PENDING);
      assert.deepEqual(
        (await fx.q.listDeadTasks({ queue })).tasks.map((t) => t.taskId),
        [ids[0], ids[2]],
      );

      assert.equal((await fx.q.redriveTasks({ queue })).redrivenCount, 2n);
      assert.equal((await fx.q.redriveTasks({ queue })).redrivenCount, 0n, "call again until 0");
      assert.deepEqual((await fx.q.listDeadTasks({ queue })).tasks, []);
      const claimed = await claim(fx.q, { workerId: "w2", queue, maxTasks: 10 });
      assert.deepEqual(
        claimed.map((t) => t.taskId),
        [...ids, alive.taskId],
      );
      assert.ok(
        claimed.every((t) => t.attempts === 1),
        "a redriven task starts its attempts again",
      );
    });

    it("serial lanes: one task of a queue's lane held at a time; other lanes, queues and non-serial tasks are free", async () => {
      const queue = newQueue();
      const enqueueAll = async (tasks: NewTask[]) => (await fx.q.enqueueTasks({ tasks })).tasks;
      const [l1, l2, l3, m1, m2, n1, n2, free1, free2] = await enqueueAll([
        { queue, lane: "L", serial: true, priority: 3 },
        { queue, lane: "L", serial: true, priority: 2 },
        { queue, lane: "L", serial: true, priority: 1 },
        { queue, lane: "M", serial: true, priority: 2 },
        { queue, lane: "M", serial: true, priority: 1 },
        { queue, lane: "N", priority: 1 },
        { queue, lane: "N", priority: 1 },
        { queue, priority: 0 },
        { queue, priority: 0 },
      ]);
      const id = (t: QueueTask | undefined) => must(t).taskId;
      const first = await claim(fx.q, { workerId: "w1", queue, maxTasks: 100 });
      assert.deepEqual(
        new Set(first.map((t) => t.taskId)),
        new Set([id(l1), id(m1), id(n1), id(n2), id(free1), id(free2)]),
        "the most urgent task of each serial lane, and every other task",
      );
      assert.deepEqual(await claim(fx.q, { workerId: "w2", queue, maxTasks: 100 }), []);

      // The same lane name in another queue is another lane.
      const otherQueue = await enqueue(fx.q, { queue: `${queue}-2`, lane: "L", serial: true });
      assert.equal(
        (await claim(fx.q, { workerId: "w2", queue: otherQueue.queue }))[0]?.taskId,
        otherQueue.taskId,
      );

      // RUNNING holds the lane as CLAIMED does.
      await fx.q.updateTaskAttempt({ taskId: id(m1), workerId: "w1", state: QueueTaskState.RUNNING });
      await fx.q.completeTask({ taskId: id(l1), workerId: "w1" });
      const next = await claim(fx.q, { workerId: "w2", queue, maxTasks: 100 });
      assert.deepEqual(
        next.map((t) => t.taskId),
        [id(l2)],
        "lane L is free again, lane M still held",
      );
      await fx.q.failTask({ taskId: id(l2), workerId: "w2", error: "retry", retryDelay: ms(0) });
      const retried = await claim(fx.q, { workerId: "w3", queue, maxTasks: 100 });
      assert.deepEqual(
        retried.map((t) => t.taskId),
        [id(l2)],
        "a failed serial task frees its lane; the most urgent is taken again",
      );
      await fx.q.completeTask({ taskId: id(m1), workerId: "w1" });
      assert.deepEqual(
        (await claim(fx.q, { workerId: "w3", queue, maxTasks: 100 })).map((t) => t.taskId),
        [id(m2)],
      );
      // Cancelling the held task frees the lane too.
      await fx.q.cancelQueueTask({ taskId: id(l2) });
      assert.deepEqual(
        (await claim(fx.q, { workerId: "w4", queue, maxTasks: 100 })).map((t) => t.taskId),
        [id(l3)],
      );

      // Only serial tasks hold a lane: a held task of the lane that is not serial does not keep
      // its serial tasks waiting (the proto's `serial`: mark every task of a lane serial).
      const xq = newQueue();
      const [x0, xs, xs2] = await enqueueAll([
        { queue: xq, lane: "X", priority: 9 },
        { queue: xq, lane: "X", serial: true, priority: 5 },
        { queue: xq, lane: "X", serial: true, priority: 4 },
      ]);
      assert.deepEqual(
        (await claim(fx.q, { workerId: "w1", queue: xq })).map((t) => t.taskId),
        [id(x0)],
      );
      assert.deepEqual(
        (await claim(fx.q, { workerId: "w2", queue: xq, maxTasks: 10 })).map((t) => t.taskId),
        [id(xs)],
        "a held task that is not serial does not hold the lane",
      );
      assert.deepEqual(
        (await claim(fx.q, { workerId: "w3", queue: xq, maxTasks: 10 })).map((t) => t.taskId),
        [],
        "the lane's serial task is held",
      );
      await fx.q.completeTask({ taskId: id(xs), workerId: "w2" });
      assert.deepEqual(
        (await claim(fx.q, { workerId: "w3", queue: xq, maxTasks: 10 })).map((t) => t.taskId),
        [id(xs2)],
      );
    });

    it("8 workers racing on a serial lane: never two held at once, taken in priority order", async () => {
      const queue = newQueue();
      const total = 12;
      const { tasks } = await fx.q.enqueueTasks({
        tasks: range(1, total).map((n) => ({
          queue,
          lane: "one",
          serial: true,
          priority: n,
          payload: { n },
        })),
      });
      // The server's versions order the changes: a task of the lane may be claimed only after the
      // previous one's completion committed, so its claim version is above that completion's.
      const claimedAt = new Map<string, bigint>();
      const doneAt = new Map<string, bigint>();
      const batches: number[] = [];
      const deadline = Date.now() + 60_000;
      await Promise.all(
        range(1, 8).map(async (w) => {
          const workerId = `sw-${w}`;
          while (doneAt.size < total && Date.now() < deadline) {
            const claimed = await claim(fx.q, {
              workerId,
              queue,
              maxTasks: 5,
              wait: ms(1_000),
              lease: ms(120_000),
            });
            if (claimed.length === 0) continue;
            batches.push(claimed.length);
            for (const t of claimed) claimedAt.set(t.taskId, t.version);
            const done = await fx.q.completeTasks({
              workerId,
              completions: claimed.map((t) => ({ taskId: t.taskId })),
            });
            for (const t of done.tasks) doneAt.set(t.taskId, t.version);
          }
        }),
      );
      assert.ok(
        batches.every((n) => n === 1),
        "one task of a serial lane per claim",
      );
      assert.equal(doneAt.size, total, "every task completed");
      const byClaim = [...claimedAt].sort((a, b) => (a[1] < b[1] ? -1 : 1));
      byClaim.forEach(([taskId, version], i) => {
        if (i === 0) return;
        const [previous] = byClaim[i - 1] ?? [""];
        assert.ok(
          version > (doneAt.get(previous) ?? 0n),
          `${taskId} claimed (version ${version}) while ${previous} was held (done at ${doneAt.get(previous)})`,
        );
      });
      assert.deepEqual(
        byClaim.map(([taskId]) => taskId),
        [...tasks].sort((a, b) => b.priority - a.priority).map((t) => t.taskId),
        "each once, highest priority first",
      );
    });

    it("CompleteTask stores the result, the first terminal state wins; CompleteTasks is all or none", async () => {
      const queue = newQueue();
      const { tasks } = await fx.q.enqueueTasks({
        tasks: range(1, 3).map((n) => ({ queue, priority: 10 - n, payload: { n } })),
      });
      const [t1, t2, t3] = tasks.map((t) => t.taskId);
      const byW1 = await claim(fx.q, { workerId: "w1", queue, maxTasks: 2 });
      assert.deepEqual(
        byW1.map((t) => t.taskId),
        [t1, t2],
      );
      const [byW2] = await claim(fx.q, { workerId: "w2", queue });
      assert.equal(byW2?.taskId, t3);

      await rejectsWith(
        fx.q.completeTasks({ workerId: "w1", completions: [{ taskId: t1 ?? "" }, { taskId: t3 ?? "" }] }),
        Code.FailedPrecondition,
        REASON.notHolder,
      );
      assert.equal((await getTask(fx.q, t1 ?? "")).state, QueueTaskState.CLAIMED, "none was completed");

      const one = await fx.q.completeTask({ taskId: t1 ?? "", workerId: "w1", result: { answer: 42 } });
      assert.equal(one.changed, true);
      const c1 = must(one.task);
      assert.equal(c1.state, QueueTaskState.COMPLETED);
      assert.deepEqual(c1.result, { answer: 42 });
      assert.ok(c1.finishTime !== undefined);
      const repeat = await fx.q.completeTask({ taskId: t1 ?? "", workerId: "w1", result: { answer: 0 } });
      assert.equal(repeat.changed, false, "the first terminal state wins");
      assert.deepEqual(repeat.task?.result, { answer: 42 });
      assert.equal(repeat.task?.version, c1.version);

      const both = await fx.q.completeTasks({
        workerId: "w1",
        completions: [{ taskId: t2 ?? "", result: { n: 2 } }, { taskId: t1 ?? "" }],
      });
      assert.deepEqual(both.changed, [true, false]);
      assert.deepEqual(
        both.tasks.map((t) => [t.taskId, t.state]),
        [
          [t2, QueueTaskState.COMPLETED],
          [t1, QueueTaskState.COMPLETED],
        ],
      );
      assert.deepEqual(both.tasks[0]?.result, { n: 2 });
      await fx.q.completeTasks({ workerId: "w2", completions: [{ taskId: t3 ?? "", result: { n: 3 } }] });
      const stats = must((await fx.q.getQueueStats({ queue })).stats);
      assert.deepEqual(plain(stats.byState), { COMPLETED: 3n });
      // Last, so that the rest is checked whatever this says.
      assert.equal(c1.workerId, "", "worker_id is empty once ended: no holder");
      assert.equal((await getTask(fx.q, t2 ?? "")).workerId, "", "worker_id is empty once ended: no holder");
    });

    it("CancelQueueTask: pending or held; the first terminal state wins; the holder learns it", async () => {
      const queue = newQueue();
      const pending = await enqueue(fx.q, { queue, priority: -5 });
      const cancelled = await fx.q.cancelQueueTask({ taskId: pending.taskId });
      assert.equal(cancelled.changed, true);
      assert.equal(cancelled.task?.state, QueueTaskState.CANCELLED);
      assert.equal(cancelled.task?.cancelReason, "cancel requested", "empty means 'cancel requested'");
      assert.ok(cancelled.task?.finishTime !== undefined);

      const heldTask = await enqueue(fx.q, { queue });
      const [held] = await claim(fx.q, { workerId: "w1", queue, maxTasks: 10 });
      assert.equal(held?.taskId, heldTask.taskId, "a cancelled task is never claimed");
      const stop = await fx.q.cancelQueueTask({ taskId: heldTask.taskId, reason: "user stopped it" });
      assert.equal(stop.changed, true);
      assert.equal(stop.task?.state, QueueTaskState.CANCELLED);
      assert.equal(stop.task?.cancelReason, "user stopped it");

      // The holder learns it at its next renewal or completion.
      await rejectsWith(
        fx.q.renewTaskLease({ taskId: heldTask.taskId, workerId: "w1" }),
        Code.FailedPrecondition,
      );
      const late = await fx.q.completeTask({
        taskId: heldTask.taskId,
        workerId: "w1",
        result: { late: true },
      });
      assert.equal(late.changed, false);
      assert.equal(late.task?.state, QueueTaskState.CANCELLED);
      assert.equal(late.task?.result, undefined);
      const lateFail = await fx.q.failTask({ taskId: heldTask.taskId, workerId: "w1", error: "late" });
      assert.equal(lateFail.changed, false);
      assert.equal(lateFail.task?.state, QueueTaskState.CANCELLED);

      const twice = await fx.q.cancelQueueTask({ taskId: heldTask.taskId, reason: "again" });
      assert.equal(twice.changed, false);
      assert.equal(twice.task?.cancelReason, "user stopped it");
      assert.equal(twice.task?.version, stop.task?.version);

      const finished = await enqueue(fx.q, { queue });
      await claim(fx.q, { workerId: "w2", queue });
      await fx.q.completeTask({ taskId: finished.taskId, workerId: "w2" });
      const tooLate = await fx.q.cancelQueueTask({ taskId: finished.taskId });
      assert.equal(tooLate.changed, false);
      assert.equal(tooLate.task?.state, QueueTaskState.COMPLETED);
      await rejectsWith(fx.q.cancelQueueTask({ taskId: randomUUID() }), Code.NotFound, REASON.taskNotFound);
      // Last, so that the rest is checked whatever this says.
      assert.equal(stop.task?.workerId, "", "worker_id is empty once cancelled: no holder");
    });

    it("UpdateTaskAttempt: the holder reports RUNNING and its attempt, an operator updates or ends it, an ended task is TASK_TERMINAL", async () => {
      const queue = newQueue();
      const t = await enqueue(fx.q, { queue });
      await rejectsWith(
        fx.q.updateTaskAttempt({ taskId: t.taskId, workerId: "w1", state: QueueTaskState.RUNNING }),
        Code.FailedPrecondition,
        REASON.notHolder,
      );
      await claim(fx.q, { workerId: "w1", queue });
      const attempt = {
        attemptId: "a-1",
        runId: randomUUID(),
        sessionId: "s-1",
        metadata: { host: "box-1" },
      };
      const running = must(
        (
          await fx.q.updateTaskAttempt({
            taskId: t.taskId,
            workerId: "w1",
            state: QueueTaskState.RUNNING,
            latestAttempt: attempt,
            sessionPath: "/sessions/s-1",
          })
        ).task,
      );
      assert.equal(running.state, QueueTaskState.RUNNING);
      assert.equal(running.workerId, "w1");
      assert.equal(running.latestAttempt?.attemptId, "a-1");
      assert.equal(running.latestAttempt?.runId, attempt.runId);
      assert.equal(running.latestAttempt?.sessionId, "s-1");
      assert.deepEqual(running.latestAttempt?.metadata, { host: "box-1" });
      assert.equal(running.sessionPath, "/sessions/s-1");
      await rejectsWith(
        fx.q.updateTaskAttempt({ taskId: t.taskId, workerId: "w2", sessionPath: "/elsewhere" }),
        Code.FailedPrecondition,
        REASON.notHolder,
      );
      const renewed = must((await fx.q.renewTaskLease({ taskId: t.taskId, workerId: "w1" })).task);
      assert.equal(renewed.state, QueueTaskState.RUNNING, "a renewal keeps RUNNING");

      // An operator (no worker id) updates the attempt whoever holds it, and keeps the state.
      const byOperator = must(
        (
          await fx.q.updateTaskAttempt({
            taskId: t.taskId,
            latestAttempt: { attemptId: "a-2" },
            sessionPath: "/sessions/s-2",
          })
        ).task,
      );
      assert.equal(byOperator.state, QueueTaskState.RUNNING);
      assert.equal(byOperator.workerId, "w1");
      assert.equal(byOperator.latestAttempt?.attemptId, "a-2");
      assert.equal(byOperator.sessionPath, "/sessions/s-2");
      assert.ok(byOperator.version > running.version);

      const blocked = must(
        (await fx.q.updateTaskAttempt({ taskId: t.taskId, state: QueueTaskState.BLOCKED })).task,
      );
      assert.equal(blocked.state, QueueTaskState.BLOCKED);
      assert.ok(blocked.finishTime !== undefined);
      const late = await fx.q.completeTask({ taskId: t.taskId, workerId: "w1" });
      assert.equal(late.changed, false);
      assert.equal(late.task?.state, QueueTaskState.BLOCKED);
      await rejectsWith(
        fx.q.updateTaskAttempt({ taskId: t.taskId, sessionPath: "/again" }),
        Code.FailedPrecondition,
        REASON.terminal,
      );
      await rejectsWith(
        fx.q.updateTaskAttempt({ taskId: t.taskId, workerId: "w1", state: QueueTaskState.COMPLETED }),
        Code.FailedPrecondition,
      );

      // The holder ends it as COMPLETED; an operator ends another as FAILED (no retry, not DEAD).
      const [a, b] = (await fx.q.enqueueTasks({ tasks: [{ queue }, { queue }] })).tasks;
      await claim(fx.q, { workerId: "w3", queue, maxTasks: 2 });
      const completed = must(
        (
          await fx.q.updateTaskAttempt({
            taskId: must(a).taskId,
            workerId: "w3",
            state: QueueTaskState.COMPLETED,
          })
        ).task,
      );
      assert.equal(completed.state, QueueTaskState.COMPLETED);
      const failed = must(
        (await fx.q.updateTaskAttempt({ taskId: must(b).taskId, state: QueueTaskState.FAILED })).task,
      );
      assert.equal(failed.state, QueueTaskState.FAILED);
      assert.equal((await getTask(fx.q, must(b).taskId)).state, QueueTaskState.FAILED);
      await rejectsWith(
        fx.q.updateTaskAttempt({ taskId: must(b).taskId, state: QueueTaskState.PENDING }),
        Code.InvalidArgument,
      );
      await rejectsWith(
        fx.q.updateTaskAttempt({ taskId: randomUUID(), sessionPath: "/x" }),
        Code.NotFound,
        REASON.taskNotFound,
      );
    });

    it("MarkTaskRead records a reader's cursor; read_version is per reader, on Get and List", async () => {
      const queue = newQueue();
      const t = await enqueue(fx.q, { queue });
      assert.equal((await getTask(fx.q, t.taskId, "alice")).readVersion, 0n, "never marked");
      const { cursor } = await fx.q.markTaskRead({ taskId: t.taskId, readerId: "alice" });
      assert.equal(cursor?.taskId, t.taskId);
      assert.equal(cursor?.readerId, "alice");
      assert.equal(cursor?.taskVersion, t.version);
      assert.ok(cursor?.readTime !== undefined);
      const forAlice = await getTask(fx.q, t.taskId, "alice");
      assert.equal(forAlice.readVersion, forAlice.version);
      assert.equal((await getTask(fx.q, t.taskId, "bob")).readVersion, 0n);
      assert.equal((await getTask(fx.q, t.taskId)).readVersion, 0n, "no reader, no read_version");
      const listed = await listAll(fx.q, { queue, readerId: "alice" });
      assert.equal(listed[0]?.readVersion, forAlice.version);

      await claim(fx.q, { workerId: "w", queue });
      const changed = await getTask(fx.q, t.taskId, "alice");
      assert.ok(changed.version > changed.readVersion, "a change after the mark is unread");
      assert.equal(changed.readVersion, forAlice.version);
      const again = await fx.q.markTaskRead({ taskId: t.taskId, readerId: "alice" });
      assert.equal(again.cursor?.taskVersion, changed.version);
      assert.equal((await getTask(fx.q, t.taskId, "alice")).readVersion, changed.version);
      await rejectsWith(
        fx.q.markTaskRead({ taskId: randomUUID(), readerId: "alice" }),
        Code.NotFound,
        REASON.taskNotFound,
      );
    });

    it("ListQueueTasks: version order, filters, pages, and updated_after_version for incremental sync", async () => {
      const queue = newQueue();
      await fx.q.enqueueTasks({
        tasks: ["a", "a", "a", "b", "b", "", ""].map((lane, i) => ({ queue, lane, payload: { i } })),
      });
      const claimed = await claim(fx.q, { workerId: "w", queue, lanes: ["a"], maxTasks: 2 });
      assert.equal(claimed.length, 2);
      const paged = await listAll(fx.q, { queue }, 3);
      const whole = (await fx.q.listQueueTasks({ queue, pageSize: 50 })).tasks;
      assert.equal(paged.length, 7);
      assert.deepEqual(
        paged.map((t) => t.taskId),
        whole.map((t) => t.taskId),
        "pages without gaps or repeats",
      );
      assert.ok(strictlyIncreasing(paged.map((t) => t.version)), "in version order");
      assert.deepEqual(
        paged
          .slice(-2)
          .map((t) => t.taskId)
          .sort(),
        claimed.map((t) => t.taskId).sort(),
        "the claimed ones changed last",
      );
      assert.equal((await listAll(fx.q, { queue, state: QueueTaskState.CLAIMED })).length, 2);
      assert.equal((await listAll(fx.q, { queue, state: QueueTaskState.PENDING })).length, 5);
      const laneB = await listAll(fx.q, { queue, lane: "b" });
      assert.deepEqual(
        laneB.map((t) => t.lane),
        ["b", "b"],
      );
      const everyQueue = await listAll(fx.q, {});
      for (const t of paged) assert.ok(everyQueue.some((x) => x.taskId === t.taskId));

      const newest = paged.at(-1)?.version ?? 0n;
      assert.deepEqual(await listAll(fx.q, { queue, updatedAfterVersion: newest }), []);
      const victim = must(paged.find((t) => t.state === QueueTaskState.PENDING));
      await fx.q.cancelQueueTask({ taskId: victim.taskId });
      const since = await listAll(fx.q, { queue, updatedAfterVersion: newest });
      assert.deepEqual(
        since.map((t) => [t.taskId, t.state]),
        [[victim.taskId, QueueTaskState.CANCELLED]],
      );
      assert.ok((since[0]?.version ?? 0n) > newest);
      const defaultPage = await fx.q.listQueueTasks({ pageSize: 0 });
      assert.ok(defaultPage.tasks.length <= 50, "0 means the server default (50)");
    });

    it("stats and snapshot agree with a full scan, state by state and lane by lane", async () => {
      const queue = newQueue();
      const now = Date.now();
      // Tasks to take to each held or ended state, claimed first (nothing else is due then).
      const held = (
        await fx.q.enqueueTasks({
          tasks: range(1, 6).map((n) => ({
            queue,
            lane: n % 2 === 0 ? "a" : "b",
            runTime: timestampFromMs(now - 60_000 + n * 1_000),
            payload: { n },
          })),
        })
      ).tasks;
      const claimed = await claim(fx.q, { workerId: "w", queue, maxTasks: 10, lease: ms(600_000) });
      assert.equal(claimed.length, 6);
      const [c1, r1, d1, f1, z1, b1] = held.map((t) => t.taskId);
      await fx.q.updateTaskAttempt({ taskId: r1 ?? "", workerId: "w", state: QueueTaskState.RUNNING });
      await fx.q.completeTask({ taskId: d1 ?? "", workerId: "w" });
      await fx.q.updateTaskAttempt({ taskId: f1 ?? "", workerId: "w", state: QueueTaskState.FAILED });
      await fx.q.failTask({ taskId: z1 ?? "", workerId: "w", error: "x", noRetry: true });
      await fx.q.updateTaskAttempt({ taskId: b1 ?? "", state: QueueTaskState.BLOCKED });
      const p1 = await enqueue(fx.q, {
        queue,
        lane: "a",
        priority: 1,
        runTime: timestampFromMs(now - 10_000),
      });
      const p2 = await enqueue(fx.q, { queue, lane: "b", priority: 5 });
      const p3 = await enqueue(fx.q, { queue, priority: 9, runTime: timestampFromMs(now + 3_600_000) });
      const x1 = await enqueue(fx.q, { queue, lane: "c" });
      await fx.q.cancelQueueTask({ taskId: x1.taskId });

      const scan = await listAll(fx.q, { queue });
      assert.equal(scan.length, 10);
      const stats = must((await fx.q.getQueueStats({ queue })).stats);
      assert.equal(stats.queue, queue);
      assertStatsMatch(stats, scan, "GetQueueStats");
      assert.deepEqual(plain(stats.byState), {
        BLOCKED: 1n,
        CANCELLED: 1n,
        CLAIMED: 1n,
        COMPLETED: 1n,
        DEAD: 1n,
        FAILED: 1n,
        PENDING: 3n,
        RUNNING: 1n,
      });
      assert.equal(stats.due, 2n, "the delayed task is not due");
      assert.ok(durationMs(must(stats.oldestDueAge)) >= 9_000, "p1 has been due 10 s");

      const snapshot = await fx.q.getQueueSnapshot({ queue });
      const snapStats = must(snapshot.stats);
      assertStatsMatch(snapStats, scan, "GetQueueSnapshot");
      assert.deepEqual(
        snapshot.topTasks.map((t) => t.taskId),
        [p3.taskId, p2.taskId, p1.taskId, c1, r1],
        "unfinished tasks, highest priority first, then due longest",
      );
      assert.ok(snapshot.topTasks.every((t) => UNFINISHED.has(t.state)));

      // Top 20 of many.
      const many = newQueue();
      await fx.q.enqueueTasks({ tasks: range(1, 25).map((n) => ({ queue: many, priority: n })) });
      const big = await fx.q.getQueueSnapshot({ queue: many });
      assert.deepEqual(
        big.topTasks.map((t) => t.priority),
        range(6, 25).reverse(),
      );
      assert.equal(big.stats?.byState.PENDING, 25n);

      // Every queue of the tenant: totals and lanes agree with a scan of everything, and the
      // newest version lies between two scans.
      const before = await listAll(fx.q, {});
      const all = must((await fx.q.getQueueStats({})).stats);
      const afterScan = await listAll(fx.q, {});
      const maxOf = (tasks: QueueTask[]) => tasks.reduce((m, t) => (t.version > m ? t.version : m), 0n);
      assert.equal(all.queue, "");
      assert.equal(all.total, BigInt(afterScan.length));
      assert.deepEqual(plain(all.byLane), plain(countsOf(afterScan, Date.now()).byLane));
      assert.ok(all.maxVersion >= maxOf(before) && all.maxVersion <= maxOf(afterScan), "max_version");
      assert.equal(
        stats.maxVersion >= maxOf(scan),
        true,
        "a queue's stats carry the tenant's newest version",
      );
      const allSnapshot = await fx.q.getQueueSnapshot({});
      assert.equal(allSnapshot.stats?.total, BigInt(afterScan.length));
      assert.ok(allSnapshot.topTasks.length === 20);
      const prio = allSnapshot.topTasks.map((t) => t.priority);
      assert.ok(
        prio.every((p, i) => i === 0 || p <= (prio[i - 1] ?? 0)),
        "highest priority first",
      );
    });

    it("WatchTasks: every task once in its latest state, then live changes; resumes after a version; from_now; bad starts", async () => {
      const queue = newQueue();
      const [t1, t2, t3] = (
        await fx.q.enqueueTasks({ tasks: range(1, 3).map((n) => ({ queue, payload: { n } })) })
      ).tasks;
      await claim(fx.q, { workerId: "w", queue });
      await fx.q.completeTask({ taskId: must(t1).taskId, workerId: "w" });
      await enqueue(fx.q, { queue: `${queue}-other` });

      const watcher = watchTasks(fx.q, { queue, afterVersion: 0n });
      await eventually(() => {
        watcher.check();
        assert.equal(watcher.latest.size, 3);
      });
      assert.equal(watcher.seen.length, 3, "each task once, in its latest state");
      assert.ok(strictlyIncreasing(watcher.seen.map((s) => s.version)), "in version order");
      assert.equal(watcher.latest.get(must(t1).taskId)?.state, QueueTaskState.COMPLETED);
      for (const s of watcher.seen) assert.equal(s.task.version, s.version);
      assert.ok(
        watcher.seen.every((s) => s.task.queue === queue),
        "only the queue asked for",
      );

      const live = await enqueue(fx.q, { queue });
      await eventually(() => assert.equal(watcher.latest.get(live.taskId)?.state, QueueTaskState.PENDING));
      await fx.q.cancelQueueTask({ taskId: must(t2).taskId });
      await eventually(() =>
        assert.equal(watcher.latest.get(must(t2).taskId)?.state, QueueTaskState.CANCELLED),
      );
      const resumeAt = watcher.seen.at(-1)?.version ?? 0n;
      await watcher.stop();

      await fx.q.cancelQueueTask({ taskId: must(t3).taskId, reason: "stop" });
      const resumed = watchTasks(fx.q, { queue, afterVersion: resumeAt });
      await eventually(() => {
        resumed.check();
        assert.equal(resumed.latest.get(must(t3).taskId)?.state, QueueTaskState.CANCELLED);
      });
      assert.deepEqual(
        resumed.seen.map((s) => s.taskId),
        [must(t3).taskId],
        "only what changed after the version resumed from",
      );
      assert.ok((resumed.seen[0]?.version ?? 0n) > resumeAt);
      await resumed.stop();

      // from_now: the past is skipped. A marker in the same queue tells when the stream is live.
      const fromNow = watchTasks(fx.q, { queue, fromNow: true });
      let marker: QueueTask | undefined;
      await eventually(async () => {
        fromNow.check();
        marker = await enqueue(fx.q, { queue, payload: { marker: true } });
        assert.ok(fromNow.latest.size > 0);
      });
      assert.ok(must(marker).taskId !== "");
      assert.ok(
        fromNow.seen.every((x) => (x.task.payload as { marker?: boolean } | undefined)?.marker === true),
        "nothing from before the call: only markers",
      );
      await fromNow.stop();

      const newest = must((await fx.q.getQueueStats({})).stats).maxVersion;
      const firstMessage = async (request: MessageInitShape<typeof WatchTasksRequestSchema>) => {
        for await (const _ of fx.q.watchTasks(request)) break;
      };
      await rejectsWith(firstMessage({ fromNow: true, afterVersion: 1n }), Code.InvalidArgument);
      await rejectsWith(firstMessage({ afterVersion: newest + 1_000n }), Code.OutOfRange);
    });

    it("a version reader from 0 against 8 concurrent writers misses nothing; a resuming reader neither", async () => {
      const queue = newQueue();
      const live = watchTasks(fx.q, { afterVersion: 0n });
      // A reader of the queue that disconnects every 7 messages and resumes after the last version.
      const resumedSeen: bigint[] = [];
      const resumedLatest = new Map<string, bigint>();
      let resuming = true;
      let current: AbortController | undefined;
      const resumer = (async () => {
        let afterVersion = 0n;
        while (resuming) {
          const controller = new AbortController();
          current = controller;
          let taken = 0;
          try {
            for await (const { task, version } of fx.q.watchTasks(
              { queue, afterVersion },
              { signal: controller.signal },
            )) {
              if (task === undefined) continue;
              resumedSeen.push(version);
              resumedLatest.set(task.taskId, version);
              afterVersion = version;
              if (++taken >= 7) {
                controller.abort();
                break;
              }
            }
          } catch (err) {
            if (!controller.signal.aborted) throw err;
          }
        }
      })();

      const writers = range(1, 8).map(async (w) => {
        const workerId = `writer-${w}`;
        for (const i of range(1, 6)) {
          const key = `k-${w}-${i}`;
          await enqueue(fx.q, { queue, idempotencyKey: key, payload: { w, i } });
          await fx.q
            .enqueueTask({ task: { queue, idempotencyKey: key, replace: true, payload: { w, i, v: 2 } } })
            .catch((err: unknown) => {
              // Another writer may have claimed it meanwhile.
              if (ConnectError.from(err).code !== Code.FailedPrecondition) throw err;
            });
          for (const t of await claim(fx.q, { workerId, queue, maxTasks: 2, lease: ms(300_000) })) {
            await fx.q.updateTaskAttempt({ taskId: t.taskId, workerId, state: QueueTaskState.RUNNING });
            if (i % 3 === 0) {
              await fx.q.failTask({ taskId: t.taskId, workerId, error: "again", retryDelay: ms(0) });
            } else {
              await fx.q.completeTask({ taskId: t.taskId, workerId, result: { w } });
            }
          }
        }
      });
      await Promise.all(writers);

      const finals = new Map((await listAll(fx.q, { queue })).map((t) => [t.taskId, t.version]));
      assert.equal(finals.size, 8 * 6);
      await eventually(() => {
        live.check();
        for (const [taskId, version] of finals) {
          assert.equal(
            live.latest.get(taskId)?.version,
            version,
            `the live reader has the final version of ${taskId}`,
          );
          assert.equal(
            resumedLatest.get(taskId),
            version,
            `the resuming reader has the final version of ${taskId}`,
          );
        }
      }, 30_000);
      resuming = false;
      current?.abort();
      await resumer;
      await live.stop();
      assert.ok(strictlyIncreasing(live.seen.map((s) => s.version)), "the live reader saw versions in order");
      assert.ok(strictlyIncreasing(resumedSeen), "the resuming reader saw versions in order, none twice");
    });

    it("a plain grpc-js worker enqueues, claims, renews and completes; errors carry their reason", async () => {
      const client = grpcQueueService(fx.server.app.port);
      const queue = newQueue("grpc");
      type Task = {
        task_id: string;
        state: string;
        attempts: number;
        worker_id: string;
        payload: unknown;
        result: unknown;
        lease_expire_time: { seconds: string; nanos: number } | null;
      };
      try {
        const enq = await unary<{ task: Task; created: boolean }>(client, "EnqueueTask", {
          task: { queue, payload: struct({ prompt: "hi", n: 2 }), max_attempts: 2 },
        });
        assert.equal(enq.created, true);
        assert.equal(enq.task.state, "QUEUE_TASK_STATE_PENDING");
        assert.deepEqual(unstruct(enq.task.payload), { prompt: "hi", n: 2 });
        const taskId = enq.task.task_id;

        const claimed = await unary<{ tasks: Task[] }>(client, "ClaimTasks", {
          worker_id: "g1",
          queue,
          max_tasks: 5,
          lease: { seconds: 30, nanos: 0 },
        });
        assert.deepEqual(
          claimed.tasks.map((t) => [t.task_id, t.state, t.attempts, t.worker_id]),
          [[taskId, "QUEUE_TASK_STATE_CLAIMED", 1, "g1"]],
        );
        const renewed = await unary<{ task: Task }>(client, "RenewTaskLease", {
          task_id: taskId,
          worker_id: "g1",
          lease: { seconds: 600, nanos: 0 },
        });
        assert.ok(
          Number(renewed.task.lease_expire_time?.seconds) >
            Number(claimed.tasks[0]?.lease_expire_time?.seconds),
        );
        const denied = await unary(client, "CompleteTask", { task_id: taskId, worker_id: "g2" }).catch(
          (e: GrpcError) => e,
        );
        assert.equal((denied as GrpcError).code, grpc.status.FAILED_PRECONDITION);
        assert.equal(errorReason(denied as GrpcError), REASON.notHolder);

        const done = await unary<{ task: Task; changed: boolean }>(client, "CompleteTask", {
          task_id: taskId,
          worker_id: "g1",
          result: struct({ ok: true }),
        });
        assert.equal(done.changed, true);
        assert.equal(done.task.state, "QUEUE_TASK_STATE_COMPLETED");
        assert.deepEqual(unstruct(done.task.result), { ok: true });

        const stats = await unary<{ stats: { total: string; by_state: Record<string, string> } }>(
          client,
          "GetQueueStats",
          { queue },
        );
        assert.equal(stats.stats.total, "1");
        assert.deepEqual(stats.stats.by_state, { COMPLETED: "1" });

        const missing = await unary(client, "GetQueueTask", { task_id: randomUUID() }).catch(
          (e: GrpcError) => e,
        );
        assert.equal((missing as GrpcError).code, grpc.status.NOT_FOUND);
        assert.equal(errorReason(missing as GrpcError), REASON.taskNotFound);
      } finally {
        client.close();
      }
    });

    // Last: it leaves 10,000 tasks behind, which the other tests need not page past.
    it("64 concurrent workers over 10,000 tasks: each completed exactly once, never held by two at once", async (t) => {
      const queue = newQueue("bulk");
      const total = 10_000;
      const started = Date.now();
      const ids = new Set<string>();
      for (const b of range(0, total / 1_000 - 1)) {
        const { tasks, created } = await fx.q.enqueueTasks({
          tasks: range(0, 999).map((i) => ({ queue, payload: { n: b * 1_000 + i } })),
        });
        assert.equal(tasks.length, 1_000);
        assert.ok(created.every(Boolean));
        for (const task of tasks) ids.add(task.taskId);
      }
      assert.equal(ids.size, total);
      const enqueued = Date.now();

      const holders = new Map<string, string>();
      const claims = new Map<string, number>();
      const completedBy = new Map<string, string>();
      const violations: string[] = [];
      const deadline = Date.now() + 200_000;
      await Promise.all(
        range(1, 64).map(async (n) => {
          const workerId = `bulk-${n}`;
          while (completedBy.size < total && Date.now() < deadline) {
            const { tasks } = await fx.q.claimTasks({
              workerId,
              queue,
              maxTasks: 10,
              lease: ms(600_000),
              // Nothing due: others hold the rest; wait a little for a straggler rather than spin.
              wait: ms(claims.size >= total ? 500 : 0),
            });
            for (const task of tasks) {
              const holder = holders.get(task.taskId);
              if (holder !== undefined)
                violations.push(`${task.taskId} claimed by ${workerId} while ${holder} held it`);
              if (completedBy.has(task.taskId))
                violations.push(`${task.taskId} claimed again after completion`);
              if (!ids.has(task.taskId)) violations.push(`${task.taskId} is not a task of this test`);
              if (
                task.workerId !== workerId ||
                task.state !== QueueTaskState.CLAIMED ||
                task.attempts !== 1
              ) {
                violations.push(
                  `${task.taskId}: worker ${task.workerId}, state ${task.state}, attempts ${task.attempts}`,
                );
              }
              holders.set(task.taskId, workerId);
              claims.set(task.taskId, (claims.get(task.taskId) ?? 0) + 1);
            }
            if (tasks.length === 0) continue;
            const res = await fx.q.completeTasks({
              workerId,
              completions: tasks.map((task) => ({ taskId: task.taskId, result: { by: workerId } })),
            });
            // Held until the completion answered: a completed task must never be claimed again
            // either, so a claim of it meanwhile is a violation all the same.
            for (const task of tasks) holders.delete(task.taskId);
            res.changed.forEach((changed, i) => {
              const id = tasks[i]?.taskId ?? "";
              if (!changed) violations.push(`${id}: completion by ${workerId} changed nothing`);
              if (completedBy.has(id))
                violations.push(`${id} completed by ${completedBy.get(id)} and ${workerId}`);
              completedBy.set(id, workerId);
            });
          }
        }),
      );
      const worked = Date.now();
      assert.deepEqual(violations.slice(0, 10), [], `${violations.length} violations`);
      assert.equal(completedBy.size, total, "every task completed");
      assert.equal(claims.size, total, "every task claimed");
      for (const [id, count] of claims) assert.equal(count, 1, `${id} claimed ${count} times`);

      const scan = await listAll(fx.q, { queue });
      assert.equal(scan.length, total);
      for (const task of scan) {
        assert.equal(task.state, QueueTaskState.COMPLETED, `${task.taskId} is COMPLETED`);
        assert.equal(task.attempts, 1);
        assert.deepEqual(task.result, { by: completedBy.get(task.taskId) }, "completed by the one claim");
      }
      const stats = must((await fx.q.getQueueStats({ queue })).stats);
      assert.equal(stats.total, BigInt(total));
      assert.deepEqual(plain(stats.byState), { COMPLETED: BigInt(total) });
      assert.equal(stats.due, 0n);
      t.diagnostic(
        `${backend.name}: enqueue ${enqueued - started} ms, claim+complete ${worked - enqueued} ms, ` +
          `check ${Date.now() - worked} ms`,
      );
    });
  });

  describe(`queue schedules on ${backend.name}`, { skip: backend.skip }, () => {
    const fx = useQueueServer(backend);

    it("creates, lists, refuses duplicates and bad crons, and deletes schedules", async () => {
      const queue = newQueue("sched");
      const yearly = { queue, cron: "0 0 1 1 *", template: { queue, payload: { yearly: true } } };
      const created = [];
      for (const id of ["sch-b", "sch-a", "sch-c"]) {
        const { schedule } = await fx.q.createSchedule({
          schedule: { ...yearly, scheduleId: `${queue}-${id}` },
        });
        created.push(must(schedule));
      }
      const s = must(created[0]);
      assert.equal(s.queue, queue);
      assert.equal(s.cron, "0 0 1 1 *");
      assert.ok(s.createTime !== undefined);
      assert.equal(s.lastRunTime, undefined, "it never ran");
      const year = new Date().getUTCFullYear();
      assert.equal(tsMs(s.nextRunTime), Date.UTC(year + 1, 0, 1), "next 1 January, 00:00 UTC");
      assert.deepEqual(s.template?.payload, { yearly: true });

      const { schedule: assigned } = await fx.q.createSchedule({ schedule: yearly });
      assert.notEqual(must(assigned).scheduleId, "", "an id is assigned when none is given");

      const listed = (await fx.q.listSchedules({ queue })).schedules.map((x) => x.scheduleId);
      assert.deepEqual(listed, [...listed].sort(), "by id");
      assert.deepEqual(
        listed.filter((id) => id.startsWith(`${queue}-sch`)),
        [`${queue}-sch-a`, `${queue}-sch-b`, `${queue}-sch-c`],
      );
      assert.equal(listed.length, 4);
      const page1 = await fx.q.listSchedules({ queue, pageSize: 3 });
      const page2 = await fx.q.listSchedules({ queue, pageSize: 3, pageToken: page1.nextPageToken });
      assert.deepEqual(
        [...page1.schedules, ...page2.schedules].map((x) => x.scheduleId),
        listed,
      );
      assert.ok((await fx.q.listSchedules({})).schedules.length >= 4);
      assert.deepEqual((await fx.q.listSchedules({ queue: `${queue}-none` })).schedules, []);

      await rejectsWith(
        fx.q.createSchedule({ schedule: { ...yearly, scheduleId: `${queue}-sch-a` } }),
        Code.AlreadyExists,
        REASON.scheduleExists,
      );
      for (const [cron, timeZone] of [
        ["every minute", ""],
        ["61 * * * *", ""],
        ["* * * * * * * *", ""],
        ["0 3 * * *", "Not/A_Zone"],
      ] as const) {
        await rejectsWith(
          fx.q.createSchedule({ schedule: { ...yearly, cron, timeZone } }),
          Code.InvalidArgument,
          REASON.invalidCron,
        );
      }

      // Read in a time zone: 03:00:00 in Paris.
      const { schedule: paris } = await fx.q.createSchedule({
        schedule: { ...yearly, cron: "0 0 3 * * *", timeZone: "Europe/Paris" },
      });
      const next = tsMs(paris?.nextRunTime);
      assert.ok(next > Date.now() && next <= Date.now() + 25 * 3_600_000);
      const hhmmss = new Intl.DateTimeFormat("en-GB", {
        timeZone: "Europe/Paris",
        hour: "2-digit",
        minute: "2-digit",
        second: "2-digit",
        hourCycle: "h23",
      }).format(new Date(next));
      assert.equal(hhmmss, "03:00:00");
      assert.equal(paris?.timeZone, "Europe/Paris");

      await fx.q.deleteSchedule({ scheduleId: `${queue}-sch-b` });
      assert.ok(
        !(await fx.q.listSchedules({ queue })).schedules.some((x) => x.scheduleId === `${queue}-sch-b`),
      );
      await rejectsWith(
        fx.q.deleteSchedule({ scheduleId: `${queue}-sch-b` }),
        Code.NotFound,
        REASON.scheduleNotFound,
      );
      await fx.q.deleteSchedule({ scheduleId: `${queue}-sch-b`, allowMissing: true });
      for (const x of (await fx.q.listSchedules({ queue })).schedules) {
        await fx.q.deleteSchedule({ scheduleId: x.scheduleId });
      }
    });

    it("a schedule every second enqueues one task per tick from its template, run_time the tick", async () => {
      const queue = newQueue("tick");
      const scheduleId = `every-second-${randomUUID()}`;
      const { schedule } = await fx.q.createSchedule({
        schedule: {
          scheduleId,
          queue,
          cron: "* * * * * *",
          template: {
            queue: "ignored-queue",
            idempotencyKey: "ignored-key",
            payload: { job: "tick" },
            priority: 2,
            lane: "cron",
            maxAttempts: 3,
          },
        },
      });
      const first = tsMs(schedule?.nextRunTime);
      assert.equal(first % 1_000, 0, "ticks fall on whole seconds");
      assert.ok(first > Date.now() - 1_000 && first <= Date.now() + 1_000);

      let ticks: QueueTask[] = [];
      await eventually(async () => {
        ticks = (await listAll(fx.q, { queue })).filter((t) => t.scheduleId === scheduleId);
        assert.ok(ticks.length >= 3, `${ticks.length} ticks so far`);
      }, 30_000);
      await fx.q.deleteSchedule({ scheduleId });
      ticks = await listAll(fx.q, { queue });
      assert.ok(ticks.every((t) => t.scheduleId === scheduleId));
      const runTimes = ticks.map((t) => tsMs(t.runTime)).sort((a, b) => a - b);
      assert.equal(new Set(runTimes).size, runTimes.length, "one task per tick");
      assert.ok(
        runTimes.every((r) => r % 1_000 === 0),
        "run_time is the tick",
      );
      assert.ok((runTimes[0] ?? 0) >= first, "no tick before the schedule's first");
      const keys = new Set(ticks.map((t) => t.idempotencyKey));
      assert.equal(keys.size, ticks.length, "each tick's own key");
      assert.ok(!keys.has("ignored-key"));
      for (const t of ticks) {
        assert.equal(t.queue, queue, "the template's queue is ignored");
        assert.deepEqual(t.payload, { job: "tick" });
        assert.equal(t.priority, 2);
        assert.equal(t.lane, "cron");
        assert.equal(t.maxAttempts, 3);
      }
      assert.deepEqual((await fx.q.listDeadTasks({ queue: "ignored-queue" })).tasks, []);
      assert.deepEqual(await listAll(fx.q, { queue: "ignored-queue" }), []);

      // The tasks it enqueued stay, and are work like any other: the oldest tick first.
      const [claimed] = await claim(fx.q, { workerId: "w", queue });
      assert.equal(tsMs(claimed?.runTime), runTimes[0]);
    });

    it("after downtime only the latest missed tick is enqueued, once", async () => {
      const db = await backend.create();
      // Ticks late by less than the catch-up window are all enqueued; a shorter window than the
      // default minute keeps the downtime short.
      const catchUpMs = 3_000;
      const env = { ...QUEUE_ENV, AGENTSTORE_SCHEDULE_CATCH_UP_MS: String(catchUpMs) };
      let server = await startServer(db, env);
      let client = queueClient(server.url);
      try {
        const queue = newQueue("downtime");
        await client.q.createSchedule({
          schedule: { scheduleId: "every-second", queue, cron: "* * * * * *", template: { queue } },
        });
        await eventually(async () => assert.ok((await listAll(client.q, { queue })).length >= 1), 20_000);
        client.close();
        await server.close();
        const stoppedAt = Date.now();
        // Down for longer than the catch-up window and a few ticks more.
        await eventually(() => assert.ok(Date.now() >= stoppedAt + catchUpMs + 3_500), 20_000);
        const restartedAt = Date.now();
        server = await startServer(db, env);
        client = queueClient(server.url);
        let runTimes: number[] = [];
        await eventually(async () => {
          runTimes = (await listAll(client.q, { queue })).map((t) => tsMs(t.runTime)).sort((x, y) => x - y);
          assert.ok(runTimes.filter((r) => r > stoppedAt).length >= 2, "ticking again");
        }, 20_000);
        await client.q.deleteSchedule({ scheduleId: "every-second" });
        assert.equal(new Set(runTimes).size, runTimes.length, `one task per tick: ${runTimes.join(", ")}`);
        const skipped = runTimes.filter((r) => r > stoppedAt && r < restartedAt - catchUpMs);
        assert.deepEqual(
          skipped,
          [],
          `the older missed ticks are skipped: down from ${stoppedAt} to ${restartedAt}, ticks ${runTimes.join(", ")}`,
        );
        const since = runTimes.filter((r) => r > stoppedAt);
        since.forEach((r, i) => {
          if (i > 0)
            assert.equal(r - (since[i - 1] ?? 0), 1_000, `ticks after the restart: ${since.join(", ")}`);
        });
      } finally {
        client.close();
        await server.close();
        await db.drop();
      }
    });

    it("a schedule's last_run_time follows its ticks", async () => {
      const queue = newQueue("last");
      const scheduleId = `last-${randomUUID()}`;
      await fx.q.createSchedule({
        schedule: { scheduleId, queue, cron: "* * * * * *", template: { queue } },
      });
      try {
        await eventually(async () => {
          const [s] = (await fx.q.listSchedules({ queue })).schedules;
          assert.ok(s?.lastRunTime !== undefined, "it ran");
          const tasks = await listAll(fx.q, { queue });
          const newest = Math.max(...tasks.map((t) => tsMs(t.runTime)));
          // A tick may land between the two reads; the schedule is never behind its tasks by more.
          assert.ok(tsMs(s.lastRunTime) <= newest && tsMs(s.lastRunTime) >= newest - 1_000);
          assert.ok(tsMs(s.nextRunTime) > tsMs(s.lastRunTime));
        }, 20_000);
      } finally {
        await fx.q.deleteSchedule({ scheduleId });
      }
    });
  });

  describe(`queue tenant isolation on ${backend.name}`, { skip: backend.skip }, () => {
    let db: TestDatabase;
    let server: TestServer;
    let alphaClient: QueueClient;
    let betaClient: QueueClient;
    const alpha = () => alphaClient.q;
    const beta = () => betaClient.q;
    const queue = "shared-queue";
    const workerId = "shared-worker";
    const scheduleId = "shared-schedule";
    let pending: QueueTask;
    let held: QueueTask;
    let dead: QueueTask;

    before(async () => {
      db = await backend.create();
      server = await startServer(db, { ...QUEUE_ENV, AGENTSTORE_API_KEYS: API_KEYS_ENV });
      alphaClient = queueClient(server.url, KEYS.alpha);
      betaClient = queueClient(server.url, KEYS.beta);
      dead = await enqueue(alpha(), { queue, priority: 9, payload: { secret: "d" } });
      await claim(alpha(), { workerId, queue });
      await alpha().failTask({ taskId: dead.taskId, workerId, error: "x", noRetry: true });
      held = await enqueue(alpha(), { queue, priority: 5, payload: { secret: "h" } });
      await claim(alpha(), { workerId, queue, lease: ms(600_000) });
      pending = await enqueue(alpha(), { queue, idempotencyKey: "k1", payload: { secret: "p" } });
      await alpha().createSchedule({
        schedule: { scheduleId, queue, cron: "0 0 0 1 1 *", template: { queue, payload: { secret: "s" } } },
      });
    });
    after(async () => {
      alphaClient?.close();
      betaClient?.close();
      await server?.close();
      await db?.drop();
    });

    it("another tenant's tasks are NOT_FOUND on every task RPC, and nothing of the owner's changes", async () => {
      const versions = new Map<string, bigint>();
      for (const t of [pending, held, dead])
        versions.set(t.taskId, (await getTask(alpha(), t.taskId)).version);
      const notFound = (call: Promise<unknown>) => rejectsWith(call, Code.NotFound, REASON.taskNotFound);
      for (const t of [pending, held, dead]) {
        const taskId = t.taskId;
        await notFound(beta().getQueueTask({ taskId }));
        await notFound(beta().renewTaskLease({ taskId, workerId }));
        await notFound(beta().completeTask({ taskId, workerId }));
        await notFound(beta().completeTasks({ workerId, completions: [{ taskId }] }));
        await notFound(beta().failTask({ taskId, workerId, error: "x" }));
        await notFound(beta().updateTaskAttempt({ taskId, workerId, state: QueueTaskState.RUNNING }));
        await notFound(beta().updateTaskAttempt({ taskId, state: QueueTaskState.FAILED }));
        await notFound(beta().cancelQueueTask({ taskId }));
        await notFound(beta().markTaskRead({ taskId, readerId: "r" }));
      }
      for (const t of [pending, held, dead]) {
        assert.equal((await getTask(alpha(), t.taskId)).version, versions.get(t.taskId), "unchanged");
      }
      assert.equal((await getTask(alpha(), held.taskId)).workerId, workerId);
      assert.equal((await getTask(alpha(), pending.taskId, "r")).readVersion, 0n);
    });

    it("claims, lists, dead tasks, redrives, stats, snapshots and watches show only the caller's tasks", async () => {
      assert.deepEqual(
        await claim(beta(), { workerId, queue, maxTasks: 100 }),
        [],
        "nothing of alpha's to claim",
      );
      assert.equal((await getTask(alpha(), pending.taskId)).state, QueueTaskState.PENDING);
      assert.deepEqual((await beta().listQueueTasks({})).tasks, []);
      assert.deepEqual((await beta().listQueueTasks({ queue })).tasks, []);
      assert.deepEqual((await beta().listDeadTasks({})).tasks, []);
      assert.deepEqual((await beta().listDeadTasks({ queue })).tasks, []);
      assert.equal((await beta().redriveTasks({ taskIds: [dead.taskId] })).redrivenCount, 0n);
      assert.equal((await beta().redriveTasks({ queue })).redrivenCount, 0n);
      assert.equal((await getTask(alpha(), dead.taskId)).state, QueueTaskState.DEAD);
      for (const q of [queue, ""]) {
        const stats = must((await beta().getQueueStats({ queue: q })).stats);
        assert.equal(stats.total, 0n);
        assert.deepEqual(stats.byState, {});
        assert.equal(stats.maxVersion, 0n, "no version of alpha's shows");
        const snapshot = await beta().getQueueSnapshot({ queue: q });
        assert.deepEqual(snapshot.topTasks, []);
        assert.equal(snapshot.stats?.total, 0n);
      }
      assert.equal(must((await alpha().getQueueStats({ queue })).stats).total, 3n);

      const page = await alpha().listQueueTasks({ pageSize: 1 });
      assert.notEqual(page.nextPageToken, "");
      await rejectsWith(
        beta().listQueueTasks({ pageSize: 1, pageToken: page.nextPageToken }),
        Code.InvalidArgument,
        REASON.invalidPageToken,
      );

      const watcher = watchTasks(beta(), { afterVersion: 0n });
      const queueWatcher = watchTasks(beta(), { queue, afterVersion: 0n });
      const mine = await enqueue(beta(), { queue, idempotencyKey: "k1", payload: { other: true } });
      assert.notEqual(mine.taskId, pending.taskId, "the same key in another tenant is another task");
      await alpha().enqueueTask({ task: { queue, payload: { later: true } } });
      const mineToo = await enqueue(beta(), { queue });
      await eventually(() => {
        watcher.check();
        queueWatcher.check();
        assert.ok(watcher.latest.has(mineToo.taskId));
        assert.ok(queueWatcher.latest.has(mineToo.taskId));
      });
      await watcher.stop();
      await queueWatcher.stop();
      assert.deepEqual([...watcher.latest.keys()].sort(), [mine.taskId, mineToo.taskId].sort());
      assert.deepEqual([...queueWatcher.latest.keys()].sort(), [mine.taskId, mineToo.taskId].sort());
      const claimedByBeta = await claim(beta(), { workerId, queue, maxTasks: 100 });
      assert.deepEqual(claimedByBeta.map((t) => t.taskId).sort(), [mine.taskId, mineToo.taskId].sort());
    });

    it("another tenant's schedules are invisible, and the same schedule id is free in each", async () => {
      assert.deepEqual((await beta().listSchedules({})).schedules, []);
      assert.deepEqual((await beta().listSchedules({ queue })).schedules, []);
      await rejectsWith(beta().deleteSchedule({ scheduleId }), Code.NotFound, REASON.scheduleNotFound);
      const { schedule } = await beta().createSchedule({
        schedule: { scheduleId, queue, cron: "0 0 0 1 1 *", template: { queue, payload: { beta: true } } },
      });
      assert.equal(schedule?.scheduleId, scheduleId);
      const [ofAlpha] = (await alpha().listSchedules({})).schedules;
      assert.deepEqual(ofAlpha?.template?.payload, { secret: "s" }, "alpha's schedule is untouched");
      const [ofBeta] = (await beta().listSchedules({})).schedules;
      assert.deepEqual(ofBeta?.template?.payload, { beta: true });
      await beta().deleteSchedule({ scheduleId });
      assert.equal((await alpha().listSchedules({})).schedules.length, 1, "deleting beta's leaves alpha's");
    });

    it("a grpc-js caller of another tenant gets NOT_FOUND, and one without a key UNAUTHENTICATED", async () => {
      const grpcBeta = grpcQueueService(server.app.port, KEYS.beta);
      const grpcAlpha = grpcQueueService(server.app.port, KEYS.alpha);
      const grpcNone = grpcQueueService(server.app.port);
      try {
        const denied = await unary(grpcBeta, "GetQueueTask", { task_id: pending.taskId }).catch(
          (e: GrpcError) => e,
        );
        assert.equal((denied as GrpcError).code, grpc.status.NOT_FOUND);
        assert.equal(errorReason(denied as GrpcError), REASON.taskNotFound);
        const own = await unary<{ task: { task_id: string } }>(grpcAlpha, "GetQueueTask", {
          task_id: pending.taskId,
        });
        assert.equal(own.task.task_id, pending.taskId);
        const anonymous = await unary(grpcNone, "ListQueueTasks", {}).catch((e: GrpcError) => e);
        assert.equal((anonymous as GrpcError).code, grpc.status.UNAUTHENTICATED);
      } finally {
        for (const c of [grpcBeta, grpcAlpha, grpcNone]) c.close();
      }
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Two replicas on one PostgreSQL (the PGlite data directory cannot be shared): one in this
// process (its gauges are visible), one a separate `node src/main.ts`.

const pgBackend = await postgres();
describe("QueueService across two replicas on one PostgreSQL", { skip: pgBackend.skip }, () => {
  let db: TestDatabase | undefined;
  let a: TestServer | undefined;
  let b: ServerProcess | undefined;
  let viaA: QueueClient | undefined;
  let viaB: QueueClient | undefined;
  // Ticks every 50 ms on both, so that both race for every tick.
  const env = { ...QUEUE_ENV, AGENTSTORE_SCHEDULE_TICK_MS: "50" };
  const qa = () => must(viaA, "client of replica A").q;
  const qb = () => must(viaB, "client of replica B").q;

  before(async () => {
    db = await pgBackend.create();
    a = await startServer(db, env);
    b = await spawnServer({ ...db.env, ...env });
    viaA = queueClient(a.url);
    viaB = queueClient(b.url);
  });
  after(async () => {
    viaA?.close();
    viaB?.close();
    await b?.stop();
    await a?.close();
    await db?.drop();
  });

  it("a claim waiting on one replica is woken by an enqueue on the other", async () => {
    const app = must(a).app;
    const queue = newQueue("wake");
    const baseline = queueWaitingClaims(app) ?? 0;
    const started = Date.now();
    const waiting = qa().claimTasks({ workerId: "w", queue, wait: ms(120_000), lease: ms(60_000) });
    if (queueWaitingClaims(app) !== undefined) {
      await eventually(() => assert.equal(queueWaitingClaims(app), baseline + 1));
    }
    const t = await enqueue(qb(), { queue, payload: { from: "b" } });
    const { tasks } = await waiting;
    assert.deepEqual(
      tasks.map((x) => x.taskId),
      [t.taskId],
    );
    assert.equal(tasks[0]?.workerId, "w");
    assert.ok(Date.now() - started < 60_000, "woken by the enqueue, not by the end of its wait");
  });

  it("a watch on one replica sees writes through the other, and resumes on either", async () => {
    const queue = newQueue("watch");
    const onB = watchTasks(qb(), { queue, afterVersion: 0n });
    const first = await enqueue(qa(), { queue });
    await eventually(() => {
      onB.check();
      assert.ok(onB.latest.has(first.taskId));
    });
    await claim(qa(), { workerId: "w", queue });
    await eventually(() => assert.equal(onB.latest.get(first.taskId)?.state, QueueTaskState.CLAIMED));
    const resumeAt = onB.seen.at(-1)?.version ?? 0n;
    await onB.stop();
    await qb().completeTask({ taskId: first.taskId, workerId: "w" });
    const second = await enqueue(qb(), { queue });
    const onA = watchTasks(qa(), { queue, afterVersion: resumeAt });
    await eventually(() => {
      onA.check();
      assert.equal(onA.latest.get(first.taskId)?.state, QueueTaskState.COMPLETED);
      assert.ok(onA.latest.has(second.taskId));
    });
    await onA.stop();
    assert.ok(onA.seen.every((s) => s.version > resumeAt));
    assert.ok(strictlyIncreasing(onA.seen.map((s) => s.version)));
  });

  it("a schedule every second enqueues exactly one task per tick across both replicas", async () => {
    const queue = newQueue("tick");
    const scheduleId = `both-${randomUUID()}`;
    const { schedule } = await qa().createSchedule({
      schedule: { scheduleId, queue, cron: "* * * * * *", template: { queue, payload: { tick: true } } },
    });
    const firstTick = tsMs(schedule?.nextRunTime);
    await eventually(async () => {
      const n = (await listAll(qb(), { queue })).length;
      assert.ok(n >= 5, `${n} ticks so far`);
    }, 30_000);
    await qb().deleteSchedule({ scheduleId });
    const tasks = await listAll(qa(), { queue });
    const runTimes = tasks.map((t) => tsMs(t.runTime)).sort((x, y) => x - y);
    assert.equal(new Set(runTimes).size, runTimes.length, `one task per tick: ${runTimes.join(", ")}`);
    assert.equal(runTimes[0], firstTick, "from the first tick on");
    runTimes.forEach((r, i) => {
      if (i > 0) assert.equal(r - (runTimes[i - 1] ?? 0), 1_000, `consecutive ticks: ${runTimes.join(", ")}`);
    });
    assert.ok(tasks.every((t) => t.scheduleId === scheduleId));
    assert.equal(new Set(tasks.map((t) => t.idempotencyKey)).size, tasks.length);
  });
});
