import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { type DescMessage, type MessageInitShape, type MessageShape, toJson } from "@bufbuild/protobuf";
import {
  type Duration,
  durationFromMs,
  durationMs,
  type Timestamp,
  timestampFromMs,
  timestampMs,
  ValueSchema,
} from "@bufbuild/protobuf/wkt";
import { type Client, Code, ConnectError } from "@connectrpc/connect";
import * as grpc from "@grpc/grpc-js";
import pg from "pg";
import {
  type ArtifactSchema,
  type Message,
  type MessageSchema,
  type Part,
  type PartSchema,
  Role,
  type Task,
  TaskSchema,
  TaskState,
} from "../gen/agentstore/v1/a2a_task_pb.ts";
import {
  type SaveTaskRequestSchema,
  type StreamTaskUpdatesRequestSchema,
  type StreamTaskUpdatesResponse,
  TaskService,
  type TaskUpdateSchema,
} from "../gen/agentstore/v1/task_service_pb.ts";
import type { App } from "../src/app.ts";
import { collect, eventually, range, reasonOf, rejectsWith } from "./helpers/assertions.ts";
import { serviceClient } from "./helpers/connect.ts";
import { type Backend, backends, postgres, type TestDatabase } from "./helpers/databases.ts";
import { errorReason, type GrpcError, grpcTaskService, struct, unary, unstruct } from "./helpers/grpc-js.ts";
import { KEYS, type ServerProcess, spawnServer, startServer, type TestServer } from "./helpers/servers.ts";

/**
 * TaskService over real gRPC, on PGlite and on PostgreSQL. The proto comments of
 * task_service.proto and a2a_task.proto are the contract these tests hold the server to.
 */

/** The ErrorInfo reasons the contract names. */
const REASON = {
  generationMismatch: "GENERATION_MISMATCH",
  terminal: "TASK_TERMINAL",
  messageIdReused: "MESSAGE_ID_REUSED",
} as const;

/** Four tenants: alpha and beta for isolation, gamma and delta each for one test that needs a clean tenant. */
const TENANT_KEYS = {
  alpha: KEYS.alpha,
  beta: KEYS.beta,
  gamma: "gamma-key-0123456789abcdef",
  delta: "delta-key-0123456789abcdef",
} as const;
type TenantName = keyof typeof TENANT_KEYS;
const TASK_KEYS_ENV = Object.entries(TENANT_KEYS)
  .map(([tenant, key]) => `${tenant}:${key}`)
  .join(",");

/** The main server: no default TTL, the sweeper every 100 ms (expired rows go quickly). */
const MAIN_ENV = {
  AGENTSTORE_API_KEYS: TASK_KEYS_ENV,
  AGENTSTORE_TASK_SWEEP_MS: "100",
  // No safety re-read within a test: streams and long polls must be woken by what happens.
  AGENTSTORE_STREAM_POLL_MS: "600000",
};
/** Configured limits, and a sweeper that never runs during the tests: expiry must hide rows by itself. */
const DEFAULT_TASK_TTL_MS = 1_500;
const MAX_MESSAGES = 5;
const CONVERSATION_TTL_MS = 3_000;
const CONFIGURED_ENV = {
  AGENTSTORE_API_KEYS: TASK_KEYS_ENV,
  AGENTSTORE_STREAM_POLL_MS: "600000",
  AGENTSTORE_TASK_TTL_MS: String(DEFAULT_TASK_TTL_MS),
  AGENTSTORE_TASK_SWEEP_MS: "600000",
  AGENTSTORE_CONVERSATION_MAX_MESSAGES: String(MAX_MESSAGES),
  AGENTSTORE_CONVERSATION_TTL_MS: String(CONVERSATION_TTL_MS),
};

/** Generous deadlines for states that come by themselves (expiry, sweeps, stream ends). */
const EXPIRY_DEADLINE_MS = 30_000;

// ---------------------------------------------------------------------------------------------
// Clients

type Tasks = Client<typeof TaskService>;

interface TaskClient {
  readonly t: Tasks;
  close(): void;
}

/** A Connect client of TaskService, on a connection of its own, with the API key as a bearer token. */
function taskClient(baseUrl: string, apiKey?: string) {
  const { client, close } = serviceClient(TaskService, baseUrl, apiKey);
  return { t: client, close };
}

// ---------------------------------------------------------------------------------------------
// Small helpers

/** A message's init object (not a message itself), so that it can be spread. */
type PlainInit<Desc extends DescMessage> = Exclude<MessageInitShape<Desc>, MessageShape<Desc>>;
type TaskInit = PlainInit<typeof TaskSchema>;
type UpdateInit = PlainInit<typeof TaskUpdateSchema>;
type PartInit = PlainInit<typeof PartSchema>;
type MessageInit = PlainInit<typeof MessageSchema>;
type ArtifactInit = PlainInit<typeof ArtifactSchema>;
type StreamRequest = PlainInit<typeof StreamTaskUpdatesRequestSchema>;
type SaveOptions = Omit<PlainInit<typeof SaveTaskRequestSchema>, "task">;

const ms = (n: number): Duration => durationFromMs(n);
const tsMs = (t: Timestamp | undefined): number => (t === undefined ? Number.NaN : timestampMs(t));
const newId = (prefix: string) => `${prefix}-${randomUUID()}`;

function must<T>(value: T | undefined, what = "value"): T {
  if (value === undefined) assert.fail(`missing ${what}`);
  return value;
}

const text = (value: string): PartInit => ({ content: { case: "text", value } });
const msg = (messageId: string, body = `text of ${messageId}`, role: Role = Role.USER): MessageInit => ({
  messageId,
  role,
  parts: [text(body)],
});
const newTask = (state: TaskState = TaskState.SUBMITTED, extra: Partial<TaskInit> = {}): TaskInit => ({
  id: newId("task"),
  contextId: newId("ctx"),
  status: { state },
  ...extra,
});
const statusUpdate = (
  state: TaskState,
  message?: MessageInit,
  metadata?: Record<string, string | number | boolean>,
): UpdateInit => ({ update: { case: "statusUpdate", value: { status: { state, message }, metadata } } });
const artifactUpdate = (artifact: ArtifactInit, append = false, lastChunk = false): UpdateInit => ({
  update: { case: "artifactUpdate", value: { artifact, append, lastChunk } },
});
const messageUpdate = (message: MessageInit): UpdateInit => ({ update: { case: "message", value: message } });

/** A part as one comparable string. */
function partKey(p: Part): string {
  switch (p.content.case) {
    case "text":
      return `text:${p.content.value}`;
    case "url":
      return `url:${p.content.value}`;
    case "raw":
      return `raw:${Buffer.from(p.content.value).toString("hex")}`;
    case "data":
      return `data:${JSON.stringify(toJson(ValueSchema, p.content.value))}`;
    default:
      return "empty";
  }
}
const historyIds = (t: Task | undefined) => (t?.history ?? []).map((m) => m.messageId);
const messageKey = (m: Message | undefined) =>
  m === undefined ? "none" : `${m.messageId}|${m.role}|${m.parts.map(partKey).join(",")}`;

async function save(t: Tasks, task: TaskInit, options: SaveOptions = {}): Promise<Task> {
  return must((await t.saveTask({ task, ...options })).task, "task");
}
async function get(t: Tasks, id: string, historyLength?: number): Promise<Task> {
  return must((await t.getTask({ id, historyLength })).task, "task");
}
async function publish(t: Tasks, taskId: string, updates: UpdateInit[], expectedGeneration?: bigint) {
  const res = await t.publishTaskUpdate({ taskId, updates, expectedGeneration });
  return { task: must(res.task, "task"), firstSeq: res.firstSeq, lastSeq: res.lastSeq };
}

/** Every task of a list, page by page. */
async function listAll(t: Tasks, request: { contextId?: string; status?: TaskState }, pageSize = 100) {
  const tasks: Task[] = [];
  let pageToken = "";
  do {
    const page = await t.listTasks({ ...request, pageSize, pageToken });
    tasks.push(...page.tasks);
    pageToken = page.nextPageToken;
  } while (pageToken !== "");
  return tasks;
}

/** Rejects if the promise has not settled by the deadline: a bound on a hang, never a synchronisation. */
async function within<T>(promise: Promise<T>, deadlineMs: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${deadlineMs} ms`)), deadlineMs);
  });
  try {
    return await Promise.race([promise, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

interface Follower {
  /** Every message received, in order. */
  readonly items: StreamTaskUpdatesResponse[];
  /** Settles when the stream ends: undefined when it ended by itself without error, else its error. */
  readonly ended: Promise<ConnectError | undefined>;
  isEnded(): boolean;
  /** Cancels the stream and waits for it to end. */
  stop(): Promise<void>;
}

/** Reads StreamTaskUpdates in the background. */
function follow(t: Tasks, request: StreamRequest): Follower {
  const controller = new AbortController();
  const items: StreamTaskUpdatesResponse[] = [];
  let over = false;
  const ended = (async () => {
    try {
      for await (const item of t.streamTaskUpdates(request, { signal: controller.signal })) items.push(item);
      return undefined;
    } catch (err) {
      return ConnectError.from(err);
    } finally {
      over = true;
    }
  })();
  return {
    items,
    ended,
    isEnded: () => over,
    async stop() {
      controller.abort();
      await ended;
    },
  };
}

/** Waits for the stream to end by itself, without an error. */
async function endsCleanly(f: Follower, what: string): Promise<void> {
  const err = await within(f.ended, EXPIRY_DEADLINE_MS, what);
  assert.equal(err, undefined, `${what}: ended with ${err?.message}`);
}

const seqsOf = (items: StreamTaskUpdatesResponse[]) => items.map((i) => Number(i.seq));
const casesOf = (items: StreamTaskUpdatesResponse[]) => items.map((i) => i.update.case);

/** Promise.allSettled, split. */
async function settle<T>(calls: Promise<T>[]) {
  const results = await Promise.allSettled(calls);
  const won: T[] = [];
  const lost: ConnectError[] = [];
  for (const r of results) {
    if (r.status === "fulfilled") won.push(r.value);
    else lost.push(ConnectError.from(r.reason));
  }
  return { won, lost };
}

/** The gauge of GetTask long polls waiting on this replica, if the tasks module publishes one. */
function taskWaiters(app: App): number | undefined {
  const gauges = app.gauges();
  const key = Object.keys(gauges).find(
    (k) => !k.startsWith("queue.") && !k.startsWith("claims.") && /task|a2a/i.test(k) && /wait|poll/i.test(k),
  );
  return key === undefined ? undefined : gauges[key];
}

/** Rows of a tenant's task (a2a_tasks and its a2a_task_updates), straight from the database. */
async function taskRows(app: App, tenant: string, taskId: string): Promise<number> {
  const [tasks, updates] = await Promise.all([
    dbCount(app, "select count(*)::int as n from a2a_tasks where tenant_id = $1 and id = $2", [
      tenant,
      taskId,
    ]),
    dbCount(app, "select count(*)::int as n from a2a_task_updates where tenant_id = $1 and task_id = $2", [
      tenant,
      taskId,
    ]),
  ]);
  return tasks + updates;
}

/** Rows of a tenant's conversation (a2a_conversations and its messages). */
async function conversationRows(app: App, tenant: string, contextId: string): Promise<number> {
  const [conversations, messages] = await Promise.all([
    dbCount(
      app,
      "select count(*)::int as n from a2a_conversations where tenant_id = $1 and context_id = $2",
      [tenant, contextId],
    ),
    dbCount(
      app,
      "select count(*)::int as n from a2a_conversation_messages where tenant_id = $1 and context_id = $2",
      [tenant, contextId],
    ),
  ]);
  return conversations + messages;
}

async function dbCount(app: App, sql: string, params: unknown[]): Promise<number> {
  const { pglite, url } = app.db;
  if (pglite !== undefined) {
    const { rows } = await pglite.query<{ n: number }>(sql, params);
    return Number(rows[0]?.n);
  }
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const { rows } = await client.query<{ n: number }>(sql, params);
    return Number(rows[0]?.n);
  } finally {
    await client.end();
  }
}

/** A small deterministic PRNG (mulberry32), so that a failing sequence can be replayed by its seed. */
function prng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
  return {
    next,
    int: (n: number) => Math.floor(next() * n),
    pick: <T>(items: readonly T[]): T => must(items[Math.floor(next() * items.length)]),
  };
}

// ---------------------------------------------------------------------------------------------
// Fixture: one server per describe block, with a client per tenant.

interface TaskFixture {
  readonly server: TestServer;
  /** Alpha's client; alpha2 is alpha on a connection of its own. */
  readonly alpha: Tasks;
  readonly alpha2: Tasks;
  readonly beta: Tasks;
  readonly gamma: Tasks;
  readonly delta: Tasks;
}

function useTaskServer(backend: Backend, env: Record<string, string>): TaskFixture {
  let db: TestDatabase | undefined;
  let server: TestServer | undefined;
  const clients = new Map<string, TaskClient>();
  before(async () => {
    db = await backend.create();
    server = await startServer(db, env);
    for (const tenant of Object.keys(TENANT_KEYS) as TenantName[]) {
      clients.set(tenant, taskClient(server.url, TENANT_KEYS[tenant]));
    }
    clients.set("alpha2", taskClient(server.url, TENANT_KEYS.alpha));
  });
  after(async () => {
    for (const c of clients.values()) c.close();
    await server?.close();
    await db?.drop();
  });
  const client = (name: string) => must(clients.get(name), `client ${name} (it opens in before())`).t;
  return {
    get server() {
      return must(server, "server (it starts in before())");
    },
    get alpha() {
      return client("alpha");
    },
    get alpha2() {
      return client("alpha2");
    },
    get beta() {
      return client("beta");
    },
    get gamma() {
      return client("gamma");
    },
    get delta() {
      return client("delta");
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Artifact folding: the reference model of TaskUpdate.artifact_update.

interface ModelArtifact {
  artifactId: string;
  name: string;
  parts: string[];
}

/**
 * Without append: adds the artifact, or replaces the one of the same id (in place). With append:
 * adds the parts to that artifact, or starts it when there is none of that id.
 */
function foldArtifact(
  model: ModelArtifact[],
  u: { artifactId: string; name: string; parts: string[]; append: boolean },
) {
  const i = model.findIndex((a) => a.artifactId === u.artifactId);
  const existing = model[i];
  if (u.append && existing !== undefined) {
    existing.parts.push(...u.parts);
    return;
  }
  const fresh = { artifactId: u.artifactId, name: u.name, parts: [...u.parts] };
  if (existing === undefined) model.push(fresh);
  else model[i] = fresh;
}

/** A random part and its key. */
function randomPart(rand: ReturnType<typeof prng>, label: string): { init: PartInit; key: string } {
  switch (rand.int(3)) {
    case 0:
      return {
        init: { content: { case: "url", value: `https://example.test/${label}` } },
        key: `url:https://example.test/${label}`,
      };
    case 1: {
      const bytes = Buffer.from(label, "utf8");
      return {
        init: { content: { case: "raw", value: new Uint8Array(bytes) } },
        key: `raw:${bytes.toString("hex")}`,
      };
    }
    default:
      return { init: text(label), key: `text:${label}` };
  }
}

// ---------------------------------------------------------------------------------------------

for (const backend of await backends()) {
  describe(`TaskService on ${backend.name}`, { skip: backend.skip }, () => {
    const fx = useTaskServer(backend, MAIN_ENV);

    it("SaveTask creates at generation 1 and replaces at generation 2; GetTask returns it; output fields are ignored", async () => {
      const t = fx.alpha;
      const id = newId("task");
      const contextId = newId("ctx");
      const input: TaskInit = {
        id,
        contextId,
        status: { state: TaskState.SUBMITTED, message: msg("s0", "accepted", Role.AGENT) },
        artifacts: [
          {
            artifactId: "a1",
            name: "out",
            description: "the output",
            parts: [
              text("hello"),
              {
                content: { case: "url", value: "https://example.test/y.png" },
                mediaType: "image/png",
                filename: "y.png",
              },
              { content: { case: "raw", value: new Uint8Array([0, 1, 255]) }, metadata: { k: 1 } },
            ],
            metadata: { kind: "file" },
            extensions: ["urn:ext:1"],
          },
        ],
        history: [msg("h1"), msg("h2", "two", Role.AGENT), msg("h3")],
        metadata: { owner: "me", n: 1, nested: { a: [1, "x"] } },
        // Output only: ignored.
        generation: 41n,
        updateSeq: 99n,
        createTime: timestampFromMs(1_000),
        updateTime: timestampFromMs(2_000),
        expireTime: timestampFromMs(3_000),
      };
      const first = await t.saveTask({ task: input });
      assert.equal(first.created, true);
      const c = must(first.task);
      assert.equal(c.id, id);
      assert.equal(c.contextId, contextId);
      assert.equal(c.generation, 1n, "1 when created, whatever the input said");
      assert.equal(c.updateSeq, 1n, "the save's `task` entry is the log's first");
      assert.ok(tsMs(c.createTime) > Date.UTC(2020, 0, 1), "create_time is the server's, not the input's");
      assert.ok(tsMs(c.updateTime) >= tsMs(c.createTime));
      assert.equal(c.expireTime, undefined, "no TTL unless configured");
      assert.equal(c.status?.state, TaskState.SUBMITTED);
      assert.ok(c.status?.timestamp !== undefined, "an unset status timestamp gets the time of the write");
      assert.equal(messageKey(c.status?.message), `s0|${Role.AGENT}|text:accepted`);
      assert.deepEqual(historyIds(c), ["h1", "h2", "h3"]);
      assert.deepEqual(
        c.history.map((m) => messageKey(m)),
        [`h1|${Role.USER}|text:text of h1`, `h2|${Role.AGENT}|text:two`, `h3|${Role.USER}|text:text of h3`],
      );
      assert.deepEqual(c.metadata, { owner: "me", n: 1, nested: { a: [1, "x"] } });
      const [art] = c.artifacts;
      assert.equal(c.artifacts.length, 1);
      assert.equal(art?.artifactId, "a1");
      assert.equal(art?.name, "out");
      assert.equal(art?.description, "the output");
      assert.deepEqual(art?.parts.map(partKey), [
        "text:hello",
        "url:https://example.test/y.png",
        "raw:0001ff",
      ]);
      assert.equal(art?.parts[1]?.mediaType, "image/png");
      assert.equal(art?.parts[1]?.filename, "y.png");
      assert.deepEqual(art?.parts[2]?.metadata, { k: 1 });
      assert.deepEqual(art?.metadata, { kind: "file" });
      assert.deepEqual(art?.extensions, ["urn:ext:1"]);

      const got = await get(t, id);
      assert.deepEqual(toJson(TaskSchema, got), toJson(TaskSchema, c), "GetTask answers the task as stored");

      const second = await t.saveTask({
        task: {
          id,
          contextId,
          status: { state: TaskState.WORKING },
          history: [msg("h9")],
          metadata: { v: 2 },
        },
      });
      assert.equal(second.created, false);
      const r = must(second.task);
      assert.equal(r.generation, 2n);
      assert.equal(r.updateSeq, 2n);
      assert.equal(tsMs(r.createTime), tsMs(c.createTime), "a replace keeps create_time");
      assert.equal(r.status?.state, TaskState.WORKING);
      assert.deepEqual(r.artifacts, [], "the whole task is replaced");
      assert.deepEqual(historyIds(r), ["h9"]);
      assert.deepEqual(r.metadata, { v: 2 });
      assert.deepEqual(toJson(TaskSchema, await get(t, id)), toJson(TaskSchema, r));

      // history_length: 0 none, N the last N, unset all.
      await t.saveTask({ task: { ...input, generation: 0n } });
      assert.deepEqual(historyIds(await get(t, id, 0)), []);
      assert.deepEqual(historyIds(await get(t, id, 2)), ["h2", "h3"]);
      assert.deepEqual(historyIds(await get(t, id, 1)), ["h3"]);
      assert.deepEqual(historyIds(await get(t, id, 10)), ["h1", "h2", "h3"]);
      assert.deepEqual(historyIds(await get(t, id)), ["h1", "h2", "h3"]);
      const stored = await get(t, id);
      assert.equal(stored.generation, 3n);
      assert.equal(stored.artifacts.length, 1, "GetTask always has the artifacts");

      await rejectsWith(t.getTask({ id: newId("none") }), Code.NotFound);
    });

    it("generation races: of 16 writers with the same expected_generation exactly one wins each round, the others are ABORTED", async () => {
      const t = fx.alpha;
      const task = newTask(TaskState.WORKING);
      const id = must(task.id);
      await save(t, task);
      let generation = 1n;
      let entries = 1;
      for (const round of range(1, 6)) {
        const calls = range(1, 16).map((writer) =>
          writer % 2 === 0
            ? t
                .saveTask({
                  task: { ...task, metadata: { round, writer } },
                  expectedGeneration: generation,
                })
                .then((r) => ({ task: must(r.task), entries: 1, writer }))
            : t
                .publishTaskUpdate({
                  taskId: id,
                  expectedGeneration: generation,
                  updates: [
                    statusUpdate(TaskState.WORKING, undefined, { round, writer }),
                    messageUpdate(msg(`r${round}-w${writer}`)),
                  ],
                })
                .then((r) => ({ task: must(r.task), entries: 2, writer })),
        );
        const { won, lost } = await settle(calls);
        assert.equal(won.length, 1, `round ${round}: exactly one writer wins (${won.length} did)`);
        assert.equal(lost.length, 15);
        for (const err of lost) {
          assert.equal(Code[err.code], Code[Code.Aborted], `round ${round}: ${err.message}`);
          assert.equal(reasonOf(err), REASON.generationMismatch);
        }
        const winner = must(won[0]);
        generation++;
        entries += winner.entries;
        assert.equal(winner.task.generation, generation);
        const now = await get(t, id);
        assert.equal(now.generation, generation, "the losers wrote nothing");
        assert.equal(now.updateSeq, BigInt(entries), "the losers appended nothing to the log");
        assert.equal(now.metadata?.writer, winner.writer, "the winner's write is the one stored");
        assert.equal(now.metadata?.round, round);
      }

      await rejectsWith(
        t.saveTask({ task, expectedGeneration: 0n }),
        Code.Aborted,
        REASON.generationMismatch,
      );
      await rejectsWith(
        t.saveTask({ task, expectedGeneration: generation + 1n }),
        Code.Aborted,
        REASON.generationMismatch,
      );
      await rejectsWith(
        t.publishTaskUpdate({
          taskId: id,
          expectedGeneration: generation - 1n,
          updates: [messageUpdate(msg("late"))],
        }),
        Code.Aborted,
        REASON.generationMismatch,
      );
      assert.equal((await get(t, id)).generation, generation);
      // Concurrent creators of one new id: one creates it, the others replace it in turn.
      const contested = newTask(TaskState.WORKING);
      const creators = await Promise.all(range(1, 16).map(() => t.saveTask({ task: contested })));
      assert.equal(creators.filter((r) => r.created).length, 1, "exactly one call created it");
      assert.deepEqual(
        creators.map((r) => Number(r.task?.generation)).sort((x, y) => x - y),
        range(1, 16),
        "one generation per save",
      );
      const onlyIfNew = newTask(TaskState.WORKING);
      const { won: firsts, lost: seconds } = await settle(
        range(1, 16).map(() => t.saveTask({ task: onlyIfNew, expectedGeneration: 0n })),
      );
      assert.equal(firsts.length, 1, "expected_generation 0: one creator wins");
      assert.ok(seconds.every((e) => e.code === Code.Aborted && reasonOf(e) === REASON.generationMismatch));
      const fresh = newTask();
      const created = await t.saveTask({ task: fresh, expectedGeneration: 0n });
      assert.equal(created.created, true, "expected_generation 0 saves a task that does not exist yet");
      assert.equal(created.task?.generation, 1n);
      const over = await t.saveTask({ task: fresh, expectedGeneration: 1n });
      assert.equal(over.task?.generation, 2n);
      const published = await publish(t, must(fresh.id), [messageUpdate(msg("m"))], 2n);
      assert.equal(published.task.generation, 3n);
      await rejectsWith(
        t.publishTaskUpdate({ taskId: newId("none"), updates: [messageUpdate(msg("m"))] }),
        Code.NotFound,
      );

      // The log holds one entry per winning update, gapless.
      await publish(t, id, [statusUpdate(TaskState.COMPLETED)]);
      const log = await collect(t.streamTaskUpdates({ taskId: id, afterSeq: 0n }));
      assert.deepEqual(seqsOf(log), range(1, entries + 1));
    });

    it("terminal stays terminal: a late status update or a save that changes the state is TASK_TERMINAL; the same terminal state may be saved", async () => {
      const t = fx.alpha;
      const task = newTask(TaskState.WORKING, { metadata: { v: 1 } });
      const id = must(task.id);
      await save(t, task);
      const canceled = await publish(t, id, [
        statusUpdate(TaskState.CANCELED, msg("why", "stopped", Role.AGENT)),
      ]);
      assert.equal(canceled.task.status?.state, TaskState.CANCELED);
      const { generation, updateSeq } = canceled.task;

      await rejectsWith(
        t.publishTaskUpdate({ taskId: id, updates: [statusUpdate(TaskState.WORKING)] }),
        Code.FailedPrecondition,
        REASON.terminal,
      );
      await rejectsWith(
        t.saveTask({ task: { ...task, status: { state: TaskState.WORKING } } }),
        Code.FailedPrecondition,
        REASON.terminal,
      );
      await rejectsWith(
        t.saveTask({ task: { ...task, status: { state: TaskState.COMPLETED } } }),
        Code.FailedPrecondition,
        REASON.terminal,
      );
      const still = await get(t, id);
      assert.equal(still.status?.state, TaskState.CANCELED);
      assert.equal(still.generation, generation);
      assert.equal(still.updateSeq, updateSeq);
      assert.equal(still.status?.message?.messageId, "why");

      const same = await t.saveTask({
        task: { ...task, status: { state: TaskState.CANCELED }, metadata: { v: 2 } },
      });
      assert.equal(same.created, false);
      assert.equal(same.task?.generation, generation + 1n, "a save with the same terminal state is allowed");
      assert.equal(same.task?.status?.state, TaskState.CANCELED);
      assert.deepEqual(same.task?.metadata, { v: 2 });

      // Every terminal state, reached by a save.
      for (const state of [TaskState.COMPLETED, TaskState.FAILED, TaskState.REJECTED]) {
        const done = newTask(state);
        await save(t, done);
        await rejectsWith(
          t.publishTaskUpdate({ taskId: must(done.id), updates: [statusUpdate(TaskState.SUBMITTED)] }),
          Code.FailedPrecondition,
          REASON.terminal,
        );
        await rejectsWith(
          t.saveTask({ task: { ...done, status: { state: TaskState.INPUT_REQUIRED } } }),
          Code.FailedPrecondition,
          REASON.terminal,
        );
        assert.equal((await get(t, must(done.id))).status?.state, state);
      }
      // INPUT_REQUIRED and AUTH_REQUIRED are not terminal.
      const waiting = newTask(TaskState.INPUT_REQUIRED);
      await save(t, waiting);
      await publish(t, must(waiting.id), [statusUpdate(TaskState.AUTH_REQUIRED)]);
      const resumed = await publish(t, must(waiting.id), [statusUpdate(TaskState.WORKING)]);
      assert.equal(resumed.task.status?.state, TaskState.WORKING);
    });

    it("a cancel racing late workers is never reverted: the task ends CANCELED or in one worker's end, and its log ends there", async () => {
      const t = fx.alpha;
      for (const round of range(1, 5)) {
        const task = newTask(TaskState.WORKING);
        const id = must(task.id);
        await save(t, task);
        const writers = range(1, 8).map((i) =>
          i === 4
            ? t.publishTaskUpdate({ taskId: id, updates: [statusUpdate(TaskState.CANCELED)] })
            : t.publishTaskUpdate({
                taskId: id,
                updates: [statusUpdate(i % 3 === 0 ? TaskState.COMPLETED : TaskState.WORKING)],
              }),
        );
        const { won, lost } = await settle(writers);
        for (const err of lost) assert.equal(ConnectError.from(err).code, Code.FailedPrecondition);
        assert.ok(won.length >= 1, `round ${round}: someone wrote`);
        const final = await get(t, id);
        const log = await collect(t.streamTaskUpdates({ taskId: id, afterSeq: 0n }));
        const states = log.flatMap((e) =>
          e.update.case === "statusUpdate" ? [e.update.value.status?.state] : [],
        );
        const firstEnd = states.findIndex((st) => st === TaskState.CANCELED || st === TaskState.COMPLETED);
        assert.ok(firstEnd >= 0, `round ${round}: the task ended`);
        assert.equal(firstEnd, states.length - 1, `round ${round}: nothing after the terminal update`);
        assert.equal(final.status?.state, states[firstEnd], `round ${round}: the task is in its first end`);
        await rejectsWith(
          t.publishTaskUpdate({ taskId: id, updates: [statusUpdate(TaskState.WORKING)] }),
          Code.FailedPrecondition,
          REASON.terminal,
        );
      }
    });

    it("a task at its size limit still ends: a terminal update is never refused for size", async () => {
      const t = fx.delta;
      const task = newTask(TaskState.WORKING);
      const id = must(task.id);
      await save(t, task);
      // Fill it close to AGENTSTORE_MAX_TASK_BYTES (2 MiB by default) with 256 KiB messages.
      const chunk = "x".repeat(256 * 1024);
      let refused = false;
      for (let i = 0; i < 12 && !refused; i++) {
        try {
          await publish(t, id, [messageUpdate(msg(`big-${i}`, chunk))]);
        } catch (err) {
          assert.equal(ConnectError.from(err).code, Code.ResourceExhausted);
          refused = true;
        }
      }
      assert.ok(refused, "the task reached its size limit");
      const ended = await publish(t, id, [statusUpdate(TaskState.CANCELED, msg("stop", chunk))]);
      assert.equal(ended.task.status?.state, TaskState.CANCELED);
    });

    it("artifact updates fold into the task as a reference model says (new ids, replace, append with and without an existing id, last_chunk)", async () => {
      const t = fx.alpha;
      const seed = Date.now() >>> 0;
      const runOne = async (n: number) => {
        const rand = prng(seed + n);
        const task = newTask(TaskState.WORKING);
        const id = must(task.id);
        await save(t, task);
        const model: ModelArtifact[] = [];
        const sent: Array<{ artifactId: string; append: boolean; lastChunk: boolean; parts: string[] }> = [];
        const pool = ["a0", "a1", "a2", "a3"];
        let step = 0;
        for (const call of range(1, 10)) {
          const batch: UpdateInit[] = [];
          for (const _ of range(1, 1 + rand.int(4))) {
            step++;
            const artifactId = rand.pick(pool);
            const append = rand.next() < 0.5;
            const lastChunk = rand.next() < 0.3;
            const parts = range(1, 1 + rand.int(3)).map((k) => randomPart(rand, `s${step}p${k}`));
            const existing = model.find((a) => a.artifactId === artifactId);
            // A chunk carries its artifact's name; only a new or replacing artifact names it anew.
            const name = append && existing !== undefined ? existing.name : `name-${step}`;
            const keys = parts.map((p) => p.key);
            foldArtifact(model, { artifactId, name, parts: keys, append });
            sent.push({ artifactId, append, lastChunk, parts: keys });
            batch.push(
              artifactUpdate({ artifactId, name, parts: parts.map((p) => p.init) }, append, lastChunk),
            );
          }
          const res = await publish(t, id, batch);
          const got = res.task.artifacts.map((a) => ({
            artifactId: a.artifactId,
            name: a.name,
            parts: a.parts.map(partKey),
          }));
          assert.deepEqual(got, model, `seed ${seed + n}, after call ${call}`);
        }
        const stored = await get(t, id);
        assert.deepEqual(
          stored.artifacts.map((a) => ({
            artifactId: a.artifactId,
            name: a.name,
            parts: a.parts.map(partKey),
          })),
          model,
          `seed ${seed + n}: GetTask`,
        );
        // The log replays every update as it was published, carrying the task's ids.
        await publish(t, id, [statusUpdate(TaskState.COMPLETED)]);
        const log = await collect(t.streamTaskUpdates({ taskId: id, afterSeq: 1n }));
        const artifactEntries = log.flatMap((e) =>
          e.update.case === "artifactUpdate" ? [e.update.value] : [],
        );
        assert.deepEqual(
          artifactEntries.map((a) => ({
            artifactId: a.artifact?.artifactId ?? "",
            append: a.append,
            lastChunk: a.lastChunk,
            parts: (a.artifact?.parts ?? []).map(partKey),
          })),
          sent,
          `seed ${seed + n}: the log`,
        );
        assert.ok(artifactEntries.every((a) => a.taskId === id && a.contextId === task.contextId));
      };
      await Promise.all(range(1, 4).map(runOne));
    });

    it("status updates fold: the previous status message joins the history, metadata merges key by key, messages join the history; a batch is one transaction", async () => {
      const t = fx.alpha;
      const task = newTask(TaskState.WORKING, {
        status: { state: TaskState.WORKING, message: msg("m0", "starting", Role.AGENT) },
        history: [msg("h1")],
        metadata: { keep: "yes", a: "old" },
      });
      const id = must(task.id);
      await save(t, task);

      const first = await publish(t, id, [
        statusUpdate(TaskState.INPUT_REQUIRED, msg("m1", "need input", Role.AGENT), { a: "new", b: 2 }),
      ]);
      assert.equal(first.task.status?.state, TaskState.INPUT_REQUIRED);
      assert.equal(first.task.status?.message?.messageId, "m1");
      assert.ok(first.task.status?.timestamp !== undefined, "an unset timestamp gets the time of the write");
      assert.deepEqual(historyIds(first.task), ["h1", "m0"], "the previous status message joins the history");
      assert.deepEqual(first.task.metadata, { keep: "yes", a: "new", b: 2 });
      assert.equal(first.task.generation, 2n);

      const second = await publish(t, id, [messageUpdate(msg("u1", "here it is"))]);
      assert.deepEqual(historyIds(second.task), ["h1", "m0", "u1"]);
      assert.equal(second.task.status?.message?.messageId, "m1", "a message leaves the status alone");

      // Three updates in one call: one generation, three consecutive seqs, folded in order.
      const batch = await publish(t, id, [
        statusUpdate(TaskState.WORKING, msg("m2", "on it", Role.AGENT), { c: true }),
        artifactUpdate({ artifactId: "out", parts: [text("x")] }),
        messageUpdate(msg("u2")),
      ]);
      assert.equal(batch.task.generation, second.task.generation + 1n, "one call bumps the generation once");
      assert.equal(batch.lastSeq - batch.firstSeq, 2n);
      assert.equal(batch.firstSeq, second.lastSeq + 1n);
      assert.equal(batch.task.updateSeq, batch.lastSeq);
      assert.deepEqual(historyIds(batch.task), ["h1", "m0", "u1", "m1", "u2"]);
      assert.equal(batch.task.status?.message?.messageId, "m2");
      assert.deepEqual(batch.task.metadata, { keep: "yes", a: "new", b: 2, c: true });
      assert.deepEqual(
        batch.task.artifacts.map((a) => a.artifactId),
        ["out"],
      );

      // A batch with an invalid update in the middle changes nothing.
      const before = await get(t, id);
      await rejectsWith(
        t.publishTaskUpdate({
          taskId: id,
          updates: [
            messageUpdate(msg("u3")),
            statusUpdate(TaskState.COMPLETED, undefined, { d: 1 }),
            statusUpdate(TaskState.WORKING),
            artifactUpdate({ artifactId: "late", parts: [text("y")] }),
          ],
        }),
        Code.FailedPrecondition,
        REASON.terminal,
      );
      const after = await get(t, id);
      assert.deepEqual(toJson(TaskSchema, after), toJson(TaskSchema, before), "all of the batch or none");
      const next = await publish(t, id, [messageUpdate(msg("u4"))]);
      assert.equal(next.firstSeq, before.updateSeq + 1n, "the refused batch took no seq");
      assert.equal(next.task.generation, before.generation + 1n);
    });

    it("PublishTaskUpdate with a request_id is idempotent: a retry folds nothing in again; other updates under it are REQUEST_ID_REUSED", async () => {
      const t = fx.alpha;
      const task = newTask(TaskState.WORKING, { artifacts: [{ artifactId: "a", parts: [text("1")] }] });
      const id = must(task.id);
      const saved = await save(t, task);
      const requestId = randomUUID();
      const chunk = artifactUpdate({ artifactId: "a", parts: [text("2")] }, true);
      const call = () =>
        t.publishTaskUpdate({
          taskId: id,
          updates: [chunk],
          requestId,
          expectedGeneration: saved.generation,
        });
      const first = await call();
      assert.equal(first.published, true);
      // The retry carries the stale expected_generation of the lost first call, and still gets its answer.
      const retried = await Promise.all([call(), call()]);
      for (const again of retried) {
        assert.equal(again.published, false);
        assert.equal(again.firstSeq, first.firstSeq);
        assert.equal(again.lastSeq, first.lastSeq);
        assert.equal(again.task?.generation, first.task?.generation);
      }
      const stored = await get(t, id);
      assert.deepEqual(
        stored.artifacts[0]?.parts.map(partKey),
        ["text:1", "text:2"],
        "the chunk was appended once",
      );
      await rejectsWith(
        t.publishTaskUpdate({
          taskId: id,
          updates: [artifactUpdate({ artifactId: "a", parts: [text("3")] }, true)],
          requestId,
        }),
        Code.AlreadyExists,
        "REQUEST_ID_REUSED",
      );
      assert.equal((await get(t, id)).generation, first.task?.generation);
    });

    it("seqs are gapless: first_seq/last_seq, update_seq, and concurrent publishers share one sequence", async () => {
      const t = fx.alpha;
      const task = newTask(TaskState.WORKING);
      const id = must(task.id);
      assert.equal((await save(t, task)).updateSeq, 1n);
      const three = await publish(t, id, [
        messageUpdate(msg("a")),
        messageUpdate(msg("b")),
        artifactUpdate({ artifactId: "x", parts: [text("1")] }),
      ]);
      assert.equal(three.firstSeq, 2n);
      assert.equal(three.lastSeq, 4n);
      assert.equal(three.task.updateSeq, 4n);
      const one = await publish(t, id, [messageUpdate(msg("c"))]);
      assert.equal(one.firstSeq, 5n);
      assert.equal(one.lastSeq, 5n);
      const saved = await save(t, { ...task, history: [msg("a")] });
      assert.equal(saved.updateSeq, 6n, "a save appends a `task` entry");
      assert.equal(saved.generation, 4n);

      const rand = prng(Date.now() >>> 0);
      const sizes = range(1, 12).map(() => 1 + rand.int(3));
      const results = await Promise.all(
        sizes.map((n, call) =>
          publish(
            t,
            id,
            range(1, n).map((k) => messageUpdate(msg(`c${call}-${k}`))),
          ),
        ),
      );
      const ranges = results
        .map((r, i) => ({ first: Number(r.firstSeq), last: Number(r.lastSeq), n: must(sizes[i]) }))
        .sort((x, y) => x.first - y.first);
      let expected = 7;
      for (const r of ranges) {
        assert.equal(r.first, expected, `ranges ${JSON.stringify(ranges)}`);
        assert.equal(r.last - r.first + 1, r.n);
        expected = r.last + 1;
      }
      const total = expected - 1;
      const now = await get(t, id);
      assert.equal(now.updateSeq, BigInt(total));
      assert.equal(now.generation, 4n + BigInt(sizes.length), "one generation per call");
      await publish(t, id, [statusUpdate(TaskState.COMPLETED)]);
      const log = await collect(t.streamTaskUpdates({ taskId: id, afterSeq: 0n }));
      assert.deepEqual(seqsOf(log), range(1, total + 1));
      // Each call's entries are its messages, in order, under its seqs.
      for (const [i, r] of results.entries()) {
        const mine = log.filter((e) => e.seq >= r.firstSeq && e.seq <= r.lastSeq);
        assert.deepEqual(
          mine.map((e) => (e.update.case === "message" ? e.update.value.messageId : "?")),
          range(1, must(sizes[i])).map((k) => `c${i}-${k}`),
        );
        assert.ok(mine.every((e) => e.generation === r.task.generation));
      }
    });

    it("StreamTaskUpdates without after_seq: the task as it is first, then live updates, ending after the terminal one", async () => {
      const t = fx.alpha;
      const task = newTask(TaskState.SUBMITTED, { history: [msg("h1"), msg("h2")] });
      const id = must(task.id);
      await save(t, task);
      const two = await publish(t, id, [statusUpdate(TaskState.WORKING), messageUpdate(msg("h3"))]);
      const stream = follow(t, { taskId: id });
      await eventually(() => assert.equal(stream.items.length, 1));
      const [first] = stream.items;
      assert.equal(first?.update.case, "task");
      assert.equal(first?.seq, two.task.updateSeq, "the seq the task reflects");
      assert.equal(first?.seq, 3n);
      assert.equal(first?.generation, two.task.generation);
      const snapshot = first?.update.case === "task" ? first.update.value : undefined;
      assert.equal(snapshot?.status?.state, TaskState.WORKING);
      assert.deepEqual(historyIds(snapshot), ["h1", "h2", "h3"]);
      assert.equal(snapshot?.generation, two.task.generation);

      const live = await publish(t, id, [
        artifactUpdate({ artifactId: "a", parts: [text("chunk")] }, false, true),
        messageUpdate(msg("h4")),
      ]);
      await eventually(() => assert.equal(stream.items.length, 3));
      assert.equal(stream.isEnded(), false, "a task that is not terminal keeps its stream open");
      await publish(t, id, [statusUpdate(TaskState.COMPLETED, msg("done", "done", Role.AGENT))]);
      await endsCleanly(stream, "the stream after the terminal update");
      assert.deepEqual(seqsOf(stream.items), [3, 4, 5, 6]);
      assert.deepEqual(casesOf(stream.items), ["task", "artifactUpdate", "message", "statusUpdate"]);
      assert.ok(stream.items.slice(1, 3).every((e) => e.generation === live.task.generation));
      const [, art, , end] = stream.items;
      const artifactEvent = art?.update.case === "artifactUpdate" ? art.update.value : undefined;
      assert.equal(artifactEvent?.taskId, id, "events carry the task's task_id");
      assert.equal(artifactEvent?.contextId, task.contextId, "and its context_id");
      assert.equal(artifactEvent?.lastChunk, true);
      const statusEvent = end?.update.case === "statusUpdate" ? end.update.value : undefined;
      assert.equal(statusEvent?.status?.state, TaskState.COMPLETED);
      assert.equal(statusEvent?.taskId, id);
      assert.equal(statusEvent?.contextId, task.contextId);

      // history_length applies to the task sent first.
      const trimmed = await collect(t.streamTaskUpdates({ taskId: id, historyLength: 1 }));
      assert.deepEqual(casesOf(trimmed), ["task"], "a terminal task: the task, then the end");
      const terminal = trimmed[0]?.update.case === "task" ? trimmed[0].update.value : undefined;
      assert.deepEqual(
        historyIds(terminal),
        ["h4"],
        "the last message; the status message is no history yet",
      );
      assert.equal(trimmed[0]?.seq, 6n);
      const none = await collect(t.streamTaskUpdates({ taskId: id, historyLength: 0 }));
      assert.deepEqual(none[0]?.update.case === "task" ? none[0].update.value.history : ["?"], []);
    });

    it("StreamTaskUpdates with after_seq: the stored updates after it, then live ones; a terminal task replays and ends; OUT_OF_RANGE and NOT_FOUND", async () => {
      const t = fx.alpha;
      const task = newTask(TaskState.WORKING);
      const id = must(task.id);
      await save(t, task);
      await publish(t, id, [messageUpdate(msg("a")), messageUpdate(msg("b")), messageUpdate(msg("c"))]);
      const whole = follow(t, { taskId: id, afterSeq: 0n });
      const tail = follow(t, { taskId: id, afterSeq: 2n });
      await eventually(() => {
        assert.equal(whole.items.length, 4);
        assert.equal(tail.items.length, 2);
      });
      assert.deepEqual(casesOf(whole.items), ["task", "message", "message", "message"]);
      assert.equal(whole.items[0]?.generation, 1n, "the generation after the write that appended the entry");
      assert.equal(whole.items[1]?.generation, 2n);
      assert.deepEqual(seqsOf(tail.items), [3, 4]);
      await publish(t, id, [messageUpdate(msg("d"))]);
      await eventually(() => {
        assert.equal(whole.items.length, 5);
        assert.equal(tail.items.length, 3);
      });
      // At the end of the log: nothing until the next update.
      const atEnd = follow(t, { taskId: id, afterSeq: 5n });
      await publish(t, id, [statusUpdate(TaskState.FAILED)]);
      for (const [f, what] of [
        [whole, "after_seq 0"],
        [tail, "after_seq 2"],
        [atEnd, "after_seq 5"],
      ] as const) {
        await endsCleanly(f, what);
      }
      assert.deepEqual(seqsOf(whole.items), range(1, 6));
      assert.deepEqual(seqsOf(tail.items), range(3, 6));
      assert.deepEqual(seqsOf(atEnd.items), [6]);
      assert.deepEqual(
        whole.items.map((e) => (e.update.case === "message" ? e.update.value.messageId : e.update.case)),
        ["task", "a", "b", "c", "d", "statusUpdate"],
      );

      // A terminal task replays what is stored and ends.
      assert.deepEqual(seqsOf(await collect(t.streamTaskUpdates({ taskId: id, afterSeq: 0n }))), range(1, 6));
      assert.deepEqual(seqsOf(await collect(t.streamTaskUpdates({ taskId: id, afterSeq: 4n }))), [5, 6]);
      assert.deepEqual(await collect(t.streamTaskUpdates({ taskId: id, afterSeq: 6n })), []);
      await rejectsWith(collect(t.streamTaskUpdates({ taskId: id, afterSeq: 7n })), Code.OutOfRange);
      await rejectsWith(collect(t.streamTaskUpdates({ taskId: newId("none") })), Code.NotFound);
      await rejectsWith(collect(t.streamTaskUpdates({ taskId: newId("none"), afterSeq: 0n })), Code.NotFound);
      // Beyond the last seq of a live task too.
      const open = newTask(TaskState.WORKING);
      await save(t, open);
      await rejectsWith(
        collect(t.streamTaskUpdates({ taskId: must(open.id), afterSeq: 2n })),
        Code.OutOfRange,
      );
      // A SaveTask that makes the task terminal ends the streams too.
      const following = follow(t, { taskId: must(open.id), afterSeq: 1n });
      await save(t, { ...open, status: { state: TaskState.REJECTED } });
      await endsCleanly(following, "the stream after a terminal save");
      assert.deepEqual(seqsOf(following.items), [2]);
      assert.deepEqual(casesOf(following.items), ["task"]);
    });

    it("GetTask long poll: answered by another client's write; with no write, at the timeout with the task as it is", async () => {
      const t = fx.alpha;
      const task = newTask(TaskState.WORKING);
      const id = must(task.id);
      await save(t, task);
      const baseline = taskWaiters(fx.server.app) ?? 0;
      let settled = false;
      const poll = t.getTask({ id, waitForGenerationAfter: 1n, timeout: ms(60_000) }).finally(() => {
        settled = true;
      });
      if (taskWaiters(fx.server.app) !== undefined) {
        await eventually(() => assert.equal(taskWaiters(fx.server.app), baseline + 1));
      }
      assert.equal(settled, false, "the poll waits while the generation is 1");
      await publish(fx.alpha2, id, [messageUpdate(msg("wake"))]);
      const woken = must((await poll).task);
      assert.equal(woken.generation, 2n);
      assert.deepEqual(historyIds(woken), ["wake"]);

      // Already past: answers at once with the task.
      const past = must((await t.getTask({ id, waitForGenerationAfter: 1n, timeout: ms(60_000) })).task);
      assert.equal(past.generation, 2n);

      // No write: the timeout ends the wait, the task as it is.
      const idle = must((await t.getTask({ id, waitForGenerationAfter: 2n, timeout: ms(300) })).task);
      assert.equal(idle.generation, 2n);
      assert.deepEqual(historyIds(idle), ["wake"]);
      const trimmed = must(
        (await t.getTask({ id, waitForGenerationAfter: 2n, timeout: ms(300), historyLength: 0 })).task,
      );
      assert.deepEqual(trimmed.history, []);
      await rejectsWith(
        t.getTask({ id: newId("none"), waitForGenerationAfter: 0n, timeout: ms(300) }),
        Code.NotFound,
      );
      // A task deleted while a poll waits: the poll answers NOT_FOUND.
      // The expectation is attached before the delete: the poll's NOT_FOUND can arrive before the
      // delete's answer, and a rejection with no handler yet fails the test on its own.
      const doomed = rejectsWith(
        within(
          t.getTask({ id, waitForGenerationAfter: 2n, timeout: ms(60_000) }),
          EXPIRY_DEADLINE_MS,
          "the poll of a deleted task",
        ),
        Code.NotFound,
      );
      if (taskWaiters(fx.server.app) !== undefined) {
        await eventually(() => assert.equal(taskWaiters(fx.server.app), baseline + 1));
      }
      await fx.alpha2.deleteTask({ id });
      await doomed;
      if (taskWaiters(fx.server.app) !== undefined) {
        await eventually(() => assert.equal(taskWaiters(fx.server.app), baseline));
      }
    });

    it("cache mode: a task with a TTL disappears from every read, list and stream; its id then creates a new task; the sweeper removes its rows", async () => {
      const t = fx.alpha;
      const contextId = newId("ctx");
      const task = newTask(TaskState.WORKING, { contextId, history: [msg("old")] });
      const id = must(task.id);
      const saved = await save(t, task, { ttl: ms(1_000) });
      const ttlSpan = tsMs(saved.expireTime) - tsMs(saved.updateTime);
      assert.ok(Math.abs(ttlSpan - 1_000) <= 250, `expire_time is the write + 1 s (${ttlSpan} ms)`);
      const keeper = newTask(TaskState.WORKING, { contextId });
      const kept = await save(t, keeper, { ttl: ms(0) });
      assert.equal(kept.expireTime, undefined, "ttl 0: it never expires");
      const visible = await get(t, id);
      assert.equal(visible.id, id);
      const stream = follow(t, { taskId: id });
      await eventually(() => assert.equal(stream.items.length, 1));

      await eventually(
        () => rejectsWith(t.getTask({ id }), Code.NotFound).then(() => undefined),
        EXPIRY_DEADLINE_MS,
      );
      const ids = (tasks: Task[]) => tasks.map((x) => x.id);
      assert.deepEqual(ids(await listAll(t, { contextId })), [keeper.id]);
      assert.equal((await t.listTasks({ contextId })).totalSize, 1, "total_size leaves it out");
      assert.ok(!ids((await t.listRecentTasks({ limit: 100 })).tasks).includes(id));
      await rejectsWith(collect(t.streamTaskUpdates({ taskId: id })), Code.NotFound);
      await rejectsWith(collect(t.streamTaskUpdates({ taskId: id, afterSeq: 0n })), Code.NotFound);
      await rejectsWith(t.getTask({ id, waitForGenerationAfter: 0n, timeout: ms(300) }), Code.NotFound);
      await rejectsWith(
        t.publishTaskUpdate({ taskId: id, updates: [messageUpdate(msg("late"))] }),
        Code.NotFound,
      );
      const err = await within(stream.ended, EXPIRY_DEADLINE_MS, "the open stream of the expired task");
      assert.equal(err === undefined ? "ended cleanly" : Code[err.code], Code[Code.NotFound]);

      // The sweeper deletes the rows later.
      await eventually(
        async () => assert.equal(await taskRows(fx.server.app, "alpha", id), 0),
        EXPIRY_DEADLINE_MS,
      );

      // The id is free again: a new task, with a log of its own.
      const again = await t.saveTask({
        task: { ...task, status: { state: TaskState.COMPLETED }, history: [] },
        expectedGeneration: 0n,
      });
      assert.equal(again.created, true);
      assert.equal(again.task?.generation, 1n);
      assert.equal(again.task?.updateSeq, 1n);
      assert.equal(again.task?.expireTime, undefined, "no TTL this time");
      const log = await collect(t.streamTaskUpdates({ taskId: id, afterSeq: 0n }));
      assert.deepEqual(seqsOf(log), [1]);
      assert.deepEqual(historyIds(log[0]?.update.case === "task" ? log[0].update.value : undefined), []);

      // Every write moves the expiry on, publishes included.
      const moving = newTask(TaskState.WORKING);
      const m1 = await save(t, moving, { ttl: ms(60_000) });
      await eventually(async () => {
        const p = await publish(t, must(moving.id), [messageUpdate(msg(randomUUID()))]);
        assert.ok(tsMs(p.task.expireTime) > tsMs(m1.expireTime), "a publish moves expire_time");
        const span = tsMs(p.task.expireTime) - tsMs(p.task.updateTime);
        assert.ok(Math.abs(span - 60_000) <= 250, `the save's TTL applies to later writes (${span} ms)`);
      });
      assert.equal((await get(t, must(keeper.id))).id, keeper.id, "ttl 0 is still there");
    });

    it("a later SaveTask without a ttl keeps the task's TTL; ttl 0 removes it", async () => {
      const t = fx.alpha;
      const task = newTask(TaskState.WORKING);
      const first = await save(t, task, { ttl: ms(600_000) });
      assert.ok(first.expireTime !== undefined);
      const published = await publish(t, must(task.id), [messageUpdate(msg("m"))]);
      assert.ok(published.task.expireTime !== undefined, "a publish keeps the save's TTL");
      const second = await save(t, task);
      assert.equal(
        tsMs(second.expireTime) - tsMs(second.updateTime),
        600_000,
        "SaveTask.ttl unset keeps the task's TTL, moved on from this write",
      );
      const third = await save(t, task, { ttl: ms(0) });
      assert.equal(third.expireTime, undefined, "ttl 0 removes it");
      assert.equal((await save(t, task)).expireTime, undefined, "and unset keeps it removed");
      assert.equal((await get(t, must(task.id))).expireTime, undefined);
    });

    it("ListTasks filters by context_id, status and status_timestamp_after, most recently updated first; include_artifacts and history_length", async () => {
      const t = fx.alpha;
      const contextId = newId("ctx");
      const base = Date.now() - 3 * 3_600_000;
      const hour = 3_600_000;
      // Saved one after another; ids that sort the same way, should two saves share a millisecond.
      let n = 0;
      const make = (state: TaskState, at: number, ctx = contextId) =>
        newTask(state, {
          id: `task-${++n}-${randomUUID()}`,
          contextId: ctx,
          status: { state, timestamp: timestampFromMs(at) },
          artifacts: [{ artifactId: "art", parts: [text("a")] }],
          history: [msg("h1"), msg("h2")],
        });
      const t1 = make(TaskState.WORKING, base);
      const t2 = make(TaskState.COMPLETED, base + hour);
      const t3 = make(TaskState.WORKING, base + 2 * hour);
      const t4 = make(TaskState.WORKING, base + 2 * hour, newId("ctx"));
      for (const x of [t1, t2, t3, t4]) await save(t, x);
      assert.equal(
        tsMs((await get(t, must(t1.id))).status?.timestamp),
        base,
        "a given status timestamp is kept",
      );

      const ids = (tasks: Task[]) => tasks.map((x) => x.id);
      const all = await t.listTasks({ contextId });
      assert.deepEqual(ids(all.tasks), [t3.id, t2.id, t1.id], "most recently updated first");
      assert.equal(all.totalSize, 3);
      assert.equal(all.nextPageToken, "");
      assert.ok(
        all.tasks.every((x) => x.artifacts.length === 0),
        "artifacts are left out by default",
      );
      assert.ok(
        all.tasks.every((x) => historyIds(x).join() === "h1,h2"),
        "unset history_length: all",
      );
      const withArtifacts = await t.listTasks({ contextId, includeArtifacts: true, historyLength: 1 });
      assert.deepEqual(
        withArtifacts.tasks.map((x) => [x.artifacts.map((a) => a.artifactId), historyIds(x)]),
        [
          [["art"], ["h2"]],
          [["art"], ["h2"]],
          [["art"], ["h2"]],
        ],
      );
      const noHistory = await t.listTasks({ contextId, historyLength: 0 });
      assert.ok(noHistory.tasks.every((x) => x.history.length === 0));

      const working = await t.listTasks({ contextId, status: TaskState.WORKING });
      assert.deepEqual(ids(working.tasks), [t3.id, t1.id]);
      assert.equal(working.totalSize, 2);
      assert.deepEqual(ids((await t.listTasks({ contextId, status: TaskState.CANCELED })).tasks), []);
      const recent = await t.listTasks({ contextId, statusTimestampAfter: timestampFromMs(base + hour) });
      assert.deepEqual(ids(recent.tasks), [t3.id, t2.id], "at or after");
      assert.equal(recent.totalSize, 2);
      const both = await t.listTasks({
        contextId,
        status: TaskState.WORKING,
        statusTimestampAfter: timestampFromMs(base + hour),
      });
      assert.deepEqual(ids(both.tasks), [t3.id]);
      assert.ok(
        ids((await t.listTasks({ pageSize: 100 })).tasks).includes(must(t4.id)),
        "no filter: every context",
      );

      await publish(t, must(t1.id), [messageUpdate(msg("h3"))]);
      assert.deepEqual(
        ids((await t.listTasks({ contextId })).tasks),
        [t1.id, t3.id, t2.id],
        "an update moves it first",
      );
      const stamped = await publish(t, must(t1.id), [
        {
          update: {
            case: "statusUpdate",
            value: {
              status: { state: TaskState.INPUT_REQUIRED, timestamp: timestampFromMs(base + 2.5 * hour) },
            },
          },
        },
      ]);
      assert.equal(tsMs(stamped.task.status?.timestamp), base + 2.5 * hour, "a given timestamp is kept");
      assert.deepEqual(
        ids(
          (await t.listTasks({ contextId, statusTimestampAfter: timestampFromMs(base + 2.25 * hour) })).tasks,
        ),
        [t1.id],
        "a status update's timestamp is what the filter sees",
      );
      assert.deepEqual(ids((await t.listTasks({ contextId, status: TaskState.INPUT_REQUIRED })).tasks), [
        t1.id,
      ]);
    });

    it("ListTasks pages: 50 by default, at most 100, total_size over every page; a page token with other filters is INVALID_ARGUMENT", async () => {
      const t = fx.alpha;
      const contextId = newId("ctx");
      const made = range(1, 120).map(() => newTask(TaskState.WORKING, { contextId }));
      for (let i = 0; i < made.length; i += 20)
        await Promise.all(made.slice(i, i + 20).map((x) => save(t, x)));
      const first = await t.listTasks({ contextId });
      assert.equal(first.tasks.length, 50);
      assert.equal(first.pageSize, 50);
      assert.equal(first.totalSize, 120);
      assert.notEqual(first.nextPageToken, "");
      const big = await t.listTasks({ contextId, pageSize: 1_000 });
      assert.equal(big.tasks.length, 100);
      assert.equal(big.pageSize, 100);
      assert.equal(big.totalSize, 120);
      const rest = await t.listTasks({ contextId, pageSize: 1_000, pageToken: big.nextPageToken });
      assert.equal(rest.tasks.length, 20);
      assert.equal(rest.nextPageToken, "");
      assert.equal(rest.totalSize, 120);
      const seen = [...big.tasks, ...rest.tasks].map((x) => x.id);
      assert.equal(new Set(seen).size, 120);
      assert.deepEqual([...seen].sort(), made.map((x) => x.id).sort());
      const updateTimes = [...big.tasks, ...rest.tasks].map((x) => tsMs(x.updateTime));
      assert.ok(
        updateTimes.every((u, i) => i === 0 || u <= (updateTimes[i - 1] ?? 0)),
        "most recently updated first",
      );

      const token = first.nextPageToken;
      await rejectsWith(t.listTasks({ contextId: newId("ctx"), pageToken: token }), Code.InvalidArgument);
      await rejectsWith(t.listTasks({ pageToken: token }), Code.InvalidArgument);
      await rejectsWith(
        t.listTasks({ contextId, status: TaskState.WORKING, pageToken: token }),
        Code.InvalidArgument,
      );
      await rejectsWith(
        t.listTasks({ contextId, statusTimestampAfter: timestampFromMs(0), pageToken: token }),
        Code.InvalidArgument,
      );
      await rejectsWith(t.listTasks({ contextId, pageToken: "not-a-token" }), Code.InvalidArgument);
      assert.equal(
        (await t.listTasks({ contextId, pageToken: token })).tasks.length,
        50,
        "the same filters page on",
      );
    });

    it("a ListTasks page token is bound to status_timestamp_after too", async () => {
      const t = fx.alpha;
      const contextId = newId("ctx");
      await Promise.all(range(1, 3).map(() => save(t, newTask(TaskState.WORKING, { contextId }))));
      const since = timestampFromMs(0);
      const first = await t.listTasks({ contextId, pageSize: 1, statusTimestampAfter: since });
      assert.notEqual(first.nextPageToken, "");
      await rejectsWith(
        t.listTasks({
          contextId,
          pageSize: 1,
          statusTimestampAfter: timestampFromMs(4_000_000_000_000),
          pageToken: first.nextPageToken,
        }),
        Code.InvalidArgument,
      );
    });

    it("a GetTask long poll on a terminal task answers at once: it takes no more updates", async () => {
      const t = fx.alpha;
      const task = newTask(TaskState.COMPLETED);
      const saved = await save(t, task);
      const { task: got } = await t.getTask({
        id: must(task.id),
        waitForGenerationAfter: saved.generation,
        timeout: ms(60_000),
      });
      assert.equal(got?.generation, saved.generation);
    });

    it("ListTasks paging is stable under concurrent writes: no task twice, every task not written meanwhile exactly once", async () => {
      const t = fx.alpha;
      const contextId = newId("ctx");
      const stable = range(1, 40).map(() => newTask(TaskState.WORKING, { contextId }));
      for (let i = 0; i < stable.length; i += 20)
        await Promise.all(stable.slice(i, i + 20).map((x) => save(t, x)));
      const rand = prng(Date.now() >>> 0);
      const written = new Set<string>();
      let writes = 0;
      let writing = true;
      const writer = (async () => {
        while (writing && writes < 2_000) {
          if (writes % 2 === 0) {
            const fresh = newTask(TaskState.WORKING, { contextId });
            written.add(must(fresh.id));
            await save(fx.alpha2, fresh);
          } else {
            const victim = must(rand.pick(stable).id);
            written.add(victim);
            await publish(fx.alpha2, victim, [messageUpdate(msg(randomUUID()))]);
          }
          writes++;
        }
      })();
      const seen: string[] = [];
      let pageToken = "";
      let pages = 0;
      try {
        do {
          const before = writes;
          const page = await t.listTasks({ contextId, pageSize: 6, pageToken });
          assert.equal(page.pageSize, 6);
          assert.ok(page.tasks.every((x) => x.contextId === contextId));
          seen.push(...page.tasks.map((x) => x.id));
          pageToken = page.nextPageToken;
          pages++;
          // Writes land between every two pages.
          await eventually(() => assert.ok(writes >= before + 2));
        } while (pageToken !== "" && pages < 500);
      } finally {
        writing = false;
        await writer;
      }
      const counts = new Map<string, number>();
      for (const id of seen) counts.set(id, (counts.get(id) ?? 0) + 1);
      const twice = [...counts].filter(([, n]) => n > 1).map(([id]) => id);
      assert.deepEqual(twice, [], "no task on two pages");
      const untouched = stable.map((x) => must(x.id)).filter((id) => !written.has(id));
      assert.ok(untouched.length > 0, "some tasks were left alone");
      const missing = untouched.filter((id) => counts.get(id) !== 1);
      assert.deepEqual(
        missing,
        [],
        `${pages} pages, ${writes} writes: every task not written meanwhile is listed`,
      );
    });

    it("ListRecentTasks: the most recently updated tasks, without history and artifacts; 20 by default", async () => {
      const t = fx.gamma;
      const made: TaskInit[] = [];
      for (const i of range(1, 22)) {
        // Ids that sort in save order, should two saves share a millisecond of update_time.
        const x = newTask(TaskState.WORKING, {
          id: `task-${String(i).padStart(2, "0")}-${randomUUID()}`,
          artifacts: [{ artifactId: "a", parts: [text("x")] }],
          history: [msg("h")],
        });
        await save(t, x);
        made.push(x);
      }
      const newestFirst = made.map((x) => x.id).reverse();
      const byDefault = (await t.listRecentTasks({})).tasks;
      assert.deepEqual(
        byDefault.map((x) => x.id),
        newestFirst.slice(0, 20),
      );
      assert.ok(byDefault.every((x) => x.history.length === 0 && x.artifacts.length === 0));
      assert.ok(byDefault.every((x) => x.status?.state === TaskState.WORKING && x.generation === 1n));
      assert.deepEqual(
        (await t.listRecentTasks({ limit: 3 })).tasks.map((x) => x.id),
        newestFirst.slice(0, 3),
      );
      assert.equal((await t.listRecentTasks({ limit: 100 })).tasks.length, 22);
      const oldest = must(made[0]?.id);
      await publish(t, oldest, [statusUpdate(TaskState.COMPLETED)]);
      assert.deepEqual(
        (await t.listRecentTasks({ limit: 2 })).tasks.map((x) => x.id),
        [oldest, newestFirst[0]],
      );
      await rejectsWith(t.listRecentTasks({ limit: 101 }), Code.InvalidArgument);
    });

    it("DeleteTask: the task and its log are gone, a second delete is NOT_FOUND, and open streams end with NOT_FOUND", async () => {
      const t = fx.alpha;
      const task = newTask(TaskState.WORKING);
      const id = must(task.id);
      await save(t, task);
      await publish(t, id, [messageUpdate(msg("a"))]);
      const live = follow(t, { taskId: id });
      const replay = follow(t, { taskId: id, afterSeq: 0n });
      await eventually(() => {
        assert.equal(live.items.length, 1);
        assert.equal(replay.items.length, 2);
      });
      await t.deleteTask({ id });
      for (const [f, what] of [
        [live, "the stream without after_seq"],
        [replay, "the stream with after_seq"],
      ] as const) {
        const err = await within(f.ended, EXPIRY_DEADLINE_MS, what);
        assert.equal(err === undefined ? "ended cleanly" : Code[err.code], Code[Code.NotFound], what);
      }
      await rejectsWith(t.getTask({ id }), Code.NotFound);
      await rejectsWith(t.deleteTask({ id }), Code.NotFound);
      await rejectsWith(t.deleteTask({ id: newId("none") }), Code.NotFound);
      await rejectsWith(collect(t.streamTaskUpdates({ taskId: id, afterSeq: 0n })), Code.NotFound);
      await rejectsWith(
        t.publishTaskUpdate({ taskId: id, updates: [messageUpdate(msg("b"))] }),
        Code.NotFound,
      );
      assert.ok(!(await listAll(t, { contextId: must(task.contextId) })).some((x) => x.id === id));
      assert.equal(await taskRows(fx.server.app, "alpha", id), 0, "the log goes with the task");
      const again = await t.saveTask({ task });
      assert.equal(again.created, true);
      assert.equal(again.task?.generation, 1n);
      assert.equal(again.task?.updateSeq, 1n, "a new log");
    });

    it("AppendMessage is idempotent by message id; another message under a used id is ALREADY_EXISTS (MESSAGE_ID_REUSED)", async () => {
      const t = fx.alpha;
      const contextId = newId("ctx");
      const first = await t.appendMessage({ contextId, message: msg("m1", "hello") });
      assert.equal(first.created, true);
      assert.equal(first.messageCount, 1n);
      const again = await t.appendMessage({ contextId, message: msg("m1", "hello") });
      assert.equal(again.created, false);
      assert.equal(again.messageCount, 1n);
      await rejectsWith(
        t.appendMessage({ contextId, message: msg("m1", "bye") }),
        Code.AlreadyExists,
        REASON.messageIdReused,
      );
      await rejectsWith(
        t.appendMessage({ contextId, message: msg("m1", "hello", Role.AGENT) }),
        Code.AlreadyExists,
        REASON.messageIdReused,
      );
      const second = await t.appendMessage({
        contextId,
        message: { ...msg("m2", "with context"), contextId },
      });
      assert.equal(second.created, true);
      assert.equal(second.messageCount, 2n);
      const { messages } = await t.listMessages({ contextId });
      assert.deepEqual(
        messages.map((m) => messageKey(m)),
        [`m1|${Role.USER}|text:hello`, `m2|${Role.USER}|text:with context`],
      );
      assert.equal((await t.getConversation({ contextId })).conversation?.messageCount, 2n);

      // Concurrent appends, each message sent twice at once: every message stored once.
      const busy = newId("ctx");
      const results = await Promise.all(
        range(1, 12).flatMap((i) => [
          t.appendMessage({ contextId: busy, message: msg(`c${i}`) }),
          t.appendMessage({ contextId: busy, message: msg(`c${i}`) }),
        ]),
      );
      assert.equal(results.filter((r) => r.created).length, 12, "each message created exactly once");
      const stored = (await t.listMessages({ contextId: busy })).messages.map((m) => m.messageId);
      assert.deepEqual(
        [...stored].sort(),
        range(1, 12)
          .map((i) => `c${i}`)
          .sort(),
      );
      assert.equal((await t.getConversation({ contextId: busy })).conversation?.messageCount, 12n);
    });

    it("ListMessages pages oldest first; GetConversation counts and does not count as an access; an unknown context has no messages", async () => {
      const t = fx.alpha;
      const contextId = newId("ctx");
      for (const i of range(1, 7)) await t.appendMessage({ contextId, message: msg(`m${i}`) });
      const pages: string[][] = [];
      let pageToken = "";
      do {
        const page = await t.listMessages({ contextId, pageSize: 3, pageToken });
        pages.push(page.messages.map((m) => m.messageId));
        pageToken = page.nextPageToken;
      } while (pageToken !== "" && pages.length < 10);
      assert.deepEqual(pages, [["m1", "m2", "m3"], ["m4", "m5", "m6"], ["m7"]]);
      const all = await t.listMessages({ contextId });
      assert.deepEqual(
        all.messages.map((m) => m.messageId),
        range(1, 7).map((i) => `m${i}`),
      );
      assert.equal(all.nextPageToken, "");
      const unknown = await t.listMessages({ contextId: newId("ctx") });
      assert.deepEqual(unknown.messages, []);
      assert.equal(unknown.nextPageToken, "");

      const c1 = must((await t.getConversation({ contextId })).conversation);
      assert.equal(c1.contextId, contextId);
      assert.equal(c1.messageCount, 7n);
      assert.ok(tsMs(c1.createTime) <= tsMs(c1.lastAccessTime));
      assert.equal(c1.expireTime, undefined, "conversations do not expire unless configured");
      const c2 = must((await t.getConversation({ contextId })).conversation);
      assert.equal(tsMs(c2.lastAccessTime), tsMs(c1.lastAccessTime), "GetConversation is no access");
      await t.listMessages({ contextId, pageSize: 1 });
      const c3 = must((await t.getConversation({ contextId })).conversation);
      assert.ok(tsMs(c3.lastAccessTime) >= tsMs(c1.lastAccessTime), "ListMessages is an access");
      assert.equal(tsMs(c3.createTime), tsMs(c1.createTime));
      await rejectsWith(t.getConversation({ contextId: newId("ctx") }), Code.NotFound);

      const token = (await t.listMessages({ contextId, pageSize: 2 })).nextPageToken;
      await rejectsWith(t.listMessages({ contextId: newId("ctx"), pageToken: token }), Code.InvalidArgument);
      await rejectsWith(t.listMessages({ contextId, pageToken: "garbage" }), Code.InvalidArgument);
    });

    it("DeleteConversation removes the conversation and its messages, not the context's tasks", async () => {
      const t = fx.alpha;
      const contextId = newId("ctx");
      const task = newTask(TaskState.WORKING, { contextId });
      await save(t, task);
      await t.appendMessage({ contextId, message: msg("m1") });
      await t.appendMessage({ contextId, message: msg("m2") });
      await t.deleteConversation({ contextId });
      await rejectsWith(t.getConversation({ contextId }), Code.NotFound);
      assert.deepEqual((await t.listMessages({ contextId })).messages, []);
      await rejectsWith(t.deleteConversation({ contextId }), Code.NotFound);
      await rejectsWith(t.deleteConversation({ contextId: newId("ctx") }), Code.NotFound);
      assert.equal((await get(t, must(task.id))).contextId, contextId, "the context's task stays");
      assert.equal(await conversationRows(fx.server.app, "alpha", contextId), 0);
      const anew = await t.appendMessage({ contextId, message: msg("m1") });
      assert.equal(anew.created, true, "a deleted conversation starts anew");
      assert.equal(anew.messageCount, 1n);
    });

    it("GetConversationStats counts the tenant's conversations and messages with the oldest and newest access", async () => {
      const t = fx.delta;
      const empty = must((await t.getConversationStats({})).stats);
      assert.equal(empty.totalConversations, 0n);
      assert.equal(empty.totalMessages, 0n);
      assert.equal(empty.oldestAccessTime, undefined);
      assert.equal(empty.newestAccessTime, undefined);
      assert.equal(empty.maxHistoryLength, 1000, "the default maximum");
      assert.equal(empty.idleTtl, undefined, "conversations do not expire by default");
      assert.ok(empty.generateTime !== undefined);
      const c1 = newId("ctx");
      const c2 = newId("ctx");
      for (const i of range(1, 3)) await t.appendMessage({ contextId: c1, message: msg(`a${i}`) });
      for (const i of range(1, 2)) await t.appendMessage({ contextId: c2, message: msg(`b${i}`) });
      const s = must((await t.getConversationStats({})).stats);
      assert.equal(s.totalConversations, 2n);
      assert.equal(s.totalMessages, 5n);
      const access1 = tsMs((await t.getConversation({ contextId: c1 })).conversation?.lastAccessTime);
      const access2 = tsMs((await t.getConversation({ contextId: c2 })).conversation?.lastAccessTime);
      assert.equal(tsMs(s.oldestAccessTime), Math.min(access1, access2));
      assert.equal(tsMs(s.newestAccessTime), Math.max(access1, access2));
      await t.deleteConversation({ contextId: c1 });
      const after = must((await t.getConversationStats({})).stats);
      assert.equal(after.totalConversations, 1n);
      assert.equal(after.totalMessages, 2n);
      assert.equal(tsMs(after.oldestAccessTime), access2);
    });

    it("tenant isolation: another tenant cannot get, list, stream, publish, save over or delete a task or a conversation", async () => {
      const a = fx.alpha;
      const b = fx.beta;
      const contextId = newId("ctx");
      const task = newTask(TaskState.WORKING, {
        contextId,
        history: [msg("secret")],
        metadata: { owner: "alpha" },
      });
      const id = must(task.id);
      await save(a, task);
      await publish(a, id, [messageUpdate(msg("secret-2"))]);
      const owner = await get(a, id);

      const notFound = (call: Promise<unknown>) => rejectsWith(call, Code.NotFound);
      await notFound(b.getTask({ id }));
      await notFound(b.getTask({ id, waitForGenerationAfter: 0n, timeout: ms(300) }));
      await notFound(b.publishTaskUpdate({ taskId: id, updates: [statusUpdate(TaskState.CANCELED)] }));
      await notFound(
        b.publishTaskUpdate({ taskId: id, updates: [messageUpdate(msg("x"))], expectedGeneration: 2n }),
      );
      await notFound(collect(b.streamTaskUpdates({ taskId: id })));
      await notFound(collect(b.streamTaskUpdates({ taskId: id, afterSeq: 0n })));
      await notFound(b.deleteTask({ id }));
      assert.deepEqual((await b.listTasks({ contextId })).tasks, []);
      assert.equal((await b.listTasks({ contextId })).totalSize, 0);
      assert.ok(!(await listAll(b, {})).some((x) => x.id === id));
      assert.ok(!(await b.listRecentTasks({ limit: 100 })).tasks.some((x) => x.id === id));
      const page = await a.listTasks({ pageSize: 1 });
      assert.notEqual(page.nextPageToken, "");
      await rejectsWith(b.listTasks({ pageSize: 1, pageToken: page.nextPageToken }), Code.InvalidArgument);

      // The same id under another tenant is another task.
      const mine = await b.saveTask({ task: { ...task, history: [], metadata: { owner: "beta" } } });
      assert.equal(mine.created, true);
      assert.equal(mine.task?.generation, 1n);
      const followed = follow(b, { taskId: id, afterSeq: 0n });
      await eventually(() => assert.equal(followed.items.length, 1));
      await publish(a, id, [messageUpdate(msg("secret-3"))]);
      await publish(b, id, [statusUpdate(TaskState.COMPLETED)]);
      await endsCleanly(followed, "beta's stream");
      assert.deepEqual(casesOf(followed.items), ["task", "statusUpdate"], "nothing of alpha's");
      const alphaNow = await get(a, id);
      assert.equal(alphaNow.generation, owner.generation + 1n, "only alpha's own publish");
      assert.deepEqual(alphaNow.metadata, { owner: "alpha" });
      assert.equal(alphaNow.status?.state, TaskState.WORKING);
      assert.deepEqual(historyIds(alphaNow), ["secret", "secret-2", "secret-3"]);
      assert.deepEqual((await get(b, id)).metadata, { owner: "beta" });
      await b.deleteTask({ id });
      assert.equal((await get(a, id)).generation, alphaNow.generation, "beta's delete leaves alpha's task");

      // Conversations.
      await a.appendMessage({ contextId, message: msg("c1", "alpha's words") });
      const statsBefore = must((await b.getConversationStats({})).stats);
      await notFound(b.getConversation({ contextId }));
      await notFound(b.deleteConversation({ contextId }));
      assert.deepEqual((await b.listMessages({ contextId })).messages, []);
      const theirs = await b.appendMessage({ contextId, message: msg("c1", "beta's words") });
      assert.equal(theirs.created, true, "the same message id in another tenant is another message");
      assert.equal(theirs.messageCount, 1n);
      const statsAfter = must((await b.getConversationStats({})).stats);
      assert.equal(statsAfter.totalConversations, statsBefore.totalConversations + 1n);
      assert.equal(statsAfter.totalMessages, statsBefore.totalMessages + 1n);
      assert.deepEqual(
        (await a.listMessages({ contextId })).messages.map((m) => messageKey(m)),
        [`c1|${Role.USER}|text:alpha's words`],
      );
      await b.deleteConversation({ contextId });
      assert.equal((await a.getConversation({ contextId })).conversation?.messageCount, 1n);
    });

    it("validation: empty ids, a missing status, an empty Part, no updates and mismatched event ids are INVALID_ARGUMENT, and change nothing", async () => {
      const t = fx.alpha;
      const invalid = (call: Promise<unknown>) => rejectsWith(call, Code.InvalidArgument);
      const id = newId("task");
      const ok = { state: TaskState.WORKING };
      const emptyPart: PartInit = {};
      await invalid(t.saveTask({}));
      await invalid(t.saveTask({ task: { id: "", status: ok } }));
      await invalid(t.saveTask({ task: { id } }));
      await invalid(t.saveTask({ task: { id, status: { state: 99 as TaskState } } }));
      await invalid(
        t.saveTask({ task: { id, status: ok, history: [{ messageId: "m", parts: [emptyPart] }] } }),
      );
      await invalid(
        t.saveTask({ task: { id, status: ok, history: [{ messageId: "", parts: [text("x")] }] } }),
      );
      await invalid(
        t.saveTask({ task: { id, status: ok, artifacts: [{ artifactId: "a", parts: [emptyPart] }] } }),
      );
      await invalid(
        t.saveTask({ task: { id, status: ok, artifacts: [{ artifactId: "", parts: [text("x")] }] } }),
      );
      await invalid(
        t.saveTask({
          task: { id, status: { state: TaskState.WORKING, message: { messageId: "s", parts: [emptyPart] } } },
        }),
      );
      await invalid(t.saveTask({ task: { id: "x".repeat(257), status: ok } }));
      await invalid(t.saveTask({ task: { id, status: ok }, ttl: ms(-1_000) }));
      await invalid(t.saveTask({ task: { id, status: ok }, ttl: ms(366 * 24 * 3_600_000) }));
      await invalid(t.saveTask({ task: { id, status: ok }, expectedGeneration: -1n }));
      await rejectsWith(t.getTask({ id }), Code.NotFound, undefined);

      const task = newTask(TaskState.WORKING);
      const taskId = must(task.id);
      const stored = await save(t, task);
      await invalid(t.publishTaskUpdate({ taskId, updates: [] }));
      await invalid(t.publishTaskUpdate({ taskId: "", updates: [messageUpdate(msg("m"))] }));
      await invalid(t.publishTaskUpdate({ taskId, updates: [{}] }));
      await invalid(
        t.publishTaskUpdate({ taskId, updates: range(1, 101).map((i) => messageUpdate(msg(`m${i}`))) }),
      );
      await invalid(
        t.publishTaskUpdate({ taskId, updates: [messageUpdate({ messageId: "m", parts: [emptyPart] })] }),
      );
      await invalid(
        t.publishTaskUpdate({ taskId, updates: [{ update: { case: "statusUpdate", value: {} } }] }),
      );
      await invalid(
        t.publishTaskUpdate({ taskId, updates: [{ update: { case: "artifactUpdate", value: {} } }] }),
      );
      await invalid(
        t.publishTaskUpdate({ taskId, updates: [artifactUpdate({ artifactId: "a", parts: [emptyPart] })] }),
      );
      const mismatched: UpdateInit[] = [
        { update: { case: "statusUpdate", value: { taskId: newId("other"), status: ok } } },
        { update: { case: "statusUpdate", value: { contextId: newId("other"), status: ok } } },
        {
          update: {
            case: "artifactUpdate",
            value: { taskId: newId("other"), artifact: { artifactId: "a", parts: [text("x")] } },
          },
        },
        {
          update: {
            case: "artifactUpdate",
            value: { contextId: newId("other"), artifact: { artifactId: "a", parts: [text("x")] } },
          },
        },
        messageUpdate({ ...msg("m"), taskId: newId("other") }),
        messageUpdate({ ...msg("m"), contextId: newId("other") }),
      ];
      for (const update of mismatched) {
        await invalid(t.publishTaskUpdate({ taskId, updates: [messageUpdate(msg("before")), update] }));
      }
      const unchanged = await get(t, taskId);
      assert.equal(unchanged.generation, stored.generation, "refused calls change nothing");
      assert.equal(unchanged.updateSeq, stored.updateSeq);
      // The task's own ids are fine.
      const matching = await publish(t, taskId, [
        { update: { case: "statusUpdate", value: { taskId, contextId: task.contextId, status: ok } } },
        messageUpdate({ ...msg("m"), taskId, contextId: task.contextId }),
      ]);
      assert.equal(matching.task.generation, stored.generation + 1n);

      await invalid(t.getTask({ id: "" }));
      await invalid(t.getTask({ id: taskId, historyLength: -1 }));
      await invalid(t.getTask({ id: taskId, waitForGenerationAfter: 1n, timeout: ms(61_000) }));
      await invalid(t.deleteTask({ id: "" }));
      await invalid(collect(t.streamTaskUpdates({ taskId: "" })));
      await invalid(collect(t.streamTaskUpdates({ taskId, afterSeq: -1n })));
      await invalid(t.listTasks({ pageSize: -1 }));
      await invalid(t.listTasks({ status: 99 as TaskState }));
      await invalid(t.listRecentTasks({ limit: -1 }));

      const contextId = newId("ctx");
      await invalid(t.appendMessage({ contextId: "", message: msg("m") }));
      await invalid(t.appendMessage({ contextId }));
      await invalid(t.appendMessage({ contextId, message: { messageId: "m", parts: [emptyPart] } }));
      await invalid(t.appendMessage({ contextId, message: { messageId: "", parts: [text("x")] } }));
      await invalid(t.appendMessage({ contextId, message: { ...msg("m"), contextId: newId("other") } }));
      await invalid(t.listMessages({ contextId: "" }));
      await invalid(t.getConversation({ contextId: "" }));
      await invalid(t.deleteConversation({ contextId: "" }));
      await rejectsWith(t.getConversation({ contextId }), Code.NotFound, undefined);
    });

    it("a plain @grpc/grpc-js client saves, publishes and reads a stream", async () => {
      const client = grpcTaskService(fx.server.app.port, TENANT_KEYS.alpha);
      try {
        const id = newId("task");
        const contextId = newId("ctx");
        type GrpcTask = { id: string; generation: string; update_seq: string; status: { state: string } };
        const saved = await unary<{ task: GrpcTask; created: boolean }>(client, "SaveTask", {
          task: {
            id,
            context_id: contextId,
            status: {
              state: "TASK_STATE_WORKING",
              message: { message_id: "s1", role: "ROLE_AGENT", parts: [{ text: "working" }] },
            },
            metadata: struct({ from: "grpc-js", n: 1 }),
          },
        });
        assert.equal(saved.created, true);
        assert.equal(saved.task.generation, "1");
        assert.equal(saved.task.status.state, "TASK_STATE_WORKING");

        type StreamItem = {
          seq: string;
          generation: string;
          update: string;
          task?: GrpcTask;
          status_update?: { task_id: string; status: { state: string } };
          artifact_update?: {
            task_id: string;
            artifact: { artifact_id: string; parts: Array<{ text: string }> };
          };
        };
        const live: StreamItem[] = [];
        const call = (client.StreamTaskUpdates as (req: unknown) => grpc.ClientReadableStream<StreamItem>)({
          task_id: id,
        });
        const ended = new Promise<GrpcError | undefined>((resolve) => {
          call.on("data", (item: StreamItem) => live.push(item));
          call.on("error", (err: GrpcError) => resolve(err));
          call.on("end", () => resolve(undefined));
        });
        await eventually(() => assert.equal(live.length, 1));
        assert.equal(live[0]?.update, "task");
        assert.equal(live[0]?.seq, "1");

        const published = await unary<{ task: GrpcTask; first_seq: string; last_seq: string }>(
          client,
          "PublishTaskUpdate",
          {
            task_id: id,
            updates: [
              {
                artifact_update: {
                  artifact: { artifact_id: "out", parts: [{ text: "42" }] },
                  last_chunk: true,
                },
              },
              {
                status_update: {
                  status: { state: "TASK_STATE_COMPLETED" },
                  metadata: struct({ done: true }),
                },
              },
            ],
          },
        );
        assert.equal(published.first_seq, "2");
        assert.equal(published.last_seq, "3");
        assert.equal(published.task.status.state, "TASK_STATE_COMPLETED");
        assert.equal(await within(ended, EXPIRY_DEADLINE_MS, "the grpc-js stream"), undefined);
        assert.deepEqual(
          live.map((i) => [i.seq, i.update]),
          [
            ["1", "task"],
            ["2", "artifact_update"],
            ["3", "status_update"],
          ],
        );
        assert.equal(live[1]?.artifact_update?.artifact.parts[0]?.text, "42");
        assert.equal(live[1]?.artifact_update?.task_id, id);
        assert.equal(live[2]?.status_update?.status.state, "TASK_STATE_COMPLETED");

        const got = await unary<{ task: GrpcTask & { metadata: unknown } }>(client, "GetTask", { id });
        assert.deepEqual(unstruct(got.task.metadata), { from: "grpc-js", n: 1, done: true });
        const late = await unary(client, "PublishTaskUpdate", {
          task_id: id,
          updates: [{ status_update: { status: { state: "TASK_STATE_WORKING" } } }],
        }).catch((e: GrpcError) => e);
        assert.equal((late as GrpcError).code, grpc.status.FAILED_PRECONDITION);
        assert.equal(errorReason(late as GrpcError), REASON.terminal);
        const replay: StreamItem[] = [];
        await new Promise<void>((resolve, reject) => {
          const again = (client.StreamTaskUpdates as (req: unknown) => grpc.ClientReadableStream<StreamItem>)(
            {
              task_id: id,
              after_seq: "1",
            },
          );
          again.on("data", (item: StreamItem) => replay.push(item));
          again.on("error", reject);
          again.on("end", resolve);
        });
        assert.deepEqual(
          replay.map((i) => i.seq),
          ["2", "3"],
        );
      } finally {
        client.close();
      }
    });
  });

  describe(`TaskService with a default task TTL and conversation limits on ${backend.name}`, {
    skip: backend.skip,
  }, () => {
    const fx = useTaskServer(backend, CONFIGURED_ENV);

    it("AGENTSTORE_TASK_TTL_MS applies to a save without a TTL; ttl 0 never expires; an expired task is invisible before any sweep", async () => {
      const t = fx.alpha;
      const contextId = newId("ctx");
      const byDefault = newTask(TaskState.WORKING, { contextId });
      const saved = await save(t, byDefault);
      const span = tsMs(saved.expireTime) - tsMs(saved.updateTime);
      assert.ok(Math.abs(span - DEFAULT_TASK_TTL_MS) <= 250, `the default TTL applies (${span} ms)`);
      const forever = newTask(TaskState.WORKING, { contextId });
      assert.equal((await save(t, forever, { ttl: ms(0) })).expireTime, undefined);
      const longer = newTask(TaskState.WORKING, { contextId });
      const l = await save(t, longer, { ttl: ms(600_000) });
      const longSpan = tsMs(l.expireTime) - tsMs(l.updateTime);
      assert.ok(Math.abs(longSpan - 600_000) <= 250, `an explicit TTL wins (${longSpan} ms)`);

      await eventually(
        () => rejectsWith(t.getTask({ id: must(byDefault.id) }), Code.NotFound).then(() => undefined),
        EXPIRY_DEADLINE_MS,
      );
      const listed = (await listAll(t, { contextId })).map((x) => x.id).sort();
      assert.deepEqual(listed, [forever.id, longer.id].sort());
      assert.ok(!(await t.listRecentTasks({ limit: 100 })).tasks.some((x) => x.id === byDefault.id));
      await rejectsWith(
        collect(t.streamTaskUpdates({ taskId: must(byDefault.id), afterSeq: 0n })),
        Code.NotFound,
      );
      // ttl 0 stays so through later writes.
      const p = await publish(t, must(forever.id), [messageUpdate(msg("still here"))]);
      assert.equal(p.task.expireTime, undefined);
      const recreated = await t.saveTask({ task: byDefault, ttl: ms(0) });
      assert.equal(recreated.created, true, "saving an expired id creates a new task");
      assert.equal(recreated.task?.generation, 1n);
    });

    it("a new task saved without a ttl gets AGENTSTORE_TASK_TTL_MS; a task whose TTL was removed keeps none", async () => {
      const t = fx.alpha;
      const fresh = await save(t, newTask(TaskState.WORKING));
      assert.equal(tsMs(fresh.expireTime) - tsMs(fresh.updateTime), DEFAULT_TASK_TTL_MS);
      const task = newTask(TaskState.WORKING);
      assert.equal((await save(t, task, { ttl: ms(0) })).expireTime, undefined);
      assert.equal((await save(t, task)).expireTime, undefined, "unset keeps the task's (absent) TTL");
    });

    it("a conversation keeps the last AGENTSTORE_CONVERSATION_MAX_MESSAGES messages", async () => {
      const t = fx.alpha;
      const contextId = newId("ctx");
      const counts: bigint[] = [];
      for (const i of range(1, 8))
        counts.push((await t.appendMessage({ contextId, message: msg(`m${i}`) })).messageCount);
      assert.deepEqual(counts, [1n, 2n, 3n, 4n, 5n, 5n, 5n, 5n]);
      assert.deepEqual(
        (await t.listMessages({ contextId })).messages.map((m) => m.messageId),
        ["m4", "m5", "m6", "m7", "m8"],
        "the oldest are dropped",
      );
      assert.equal((await t.getConversation({ contextId })).conversation?.messageCount, 5n);
      const again = await t.appendMessage({ contextId, message: msg("m8") });
      assert.equal(again.created, false);
      assert.equal(again.messageCount, 5n);
      const stats = must((await fx.delta.getConversationStats({})).stats);
      assert.equal(stats.maxHistoryLength, MAX_MESSAGES);
      assert.equal(durationMs(must(stats.idleTtl, "idle_ttl")), CONVERSATION_TTL_MS);
    });

    it("a ListMessages page token whose next messages were trimmed is OUT_OF_RANGE, not a silent skip", async () => {
      const t = fx.alpha;
      const contextId = newId("ctx");
      for (const i of range(1, 5)) await t.appendMessage({ contextId, message: msg(`m${i}`) });
      const first = await t.listMessages({ contextId, pageSize: 2 });
      assert.deepEqual(
        first.messages.map((m) => m.messageId),
        ["m1", "m2"],
      );
      for (const i of range(6, 9)) await t.appendMessage({ contextId, message: msg(`m${i}`) });
      await rejectsWith(
        t.listMessages({ contextId, pageSize: 2, pageToken: first.nextPageToken }),
        Code.OutOfRange,
        "MESSAGES_TRIMMED",
      );
    });

    it("a conversation idle past AGENTSTORE_CONVERSATION_TTL_MS is gone at once; an access keeps it alive", async () => {
      // gamma: a tenant with no other conversations, whose totals are exact.
      const t = fx.gamma;
      const idle = newId("idle");
      const busy = newId("busy");
      await t.appendMessage({ contextId: idle, message: msg("i1") });
      await t.appendMessage({ contextId: busy, message: msg("b1") });
      await t.appendMessage({ contextId: busy, message: msg("b2") });
      const c = must((await t.getConversation({ contextId: idle })).conversation);
      assert.equal(
        tsMs(c.expireTime) - tsMs(c.lastAccessTime),
        CONVERSATION_TTL_MS,
        "last access + the idle TTL",
      );
      const statsBefore = must((await t.getConversationStats({})).stats);
      assert.equal(statsBefore.totalConversations, 2n);
      assert.equal(statsBefore.totalMessages, 3n);
      // Read the busy one again and again (each read is an access) until the idle one is gone.
      await eventually(async () => {
        await t.listMessages({ contextId: busy });
        await rejectsWith(t.getConversation({ contextId: idle }), Code.NotFound);
      }, EXPIRY_DEADLINE_MS);
      const kept = must((await t.getConversation({ contextId: busy })).conversation);
      assert.equal(kept.messageCount, 2n, "accessed within the TTL: alive");
      assert.ok(tsMs(kept.lastAccessTime) > tsMs(c.lastAccessTime));
      assert.deepEqual((await t.listMessages({ contextId: idle })).messages, []);
      await rejectsWith(t.deleteConversation({ contextId: idle }), Code.NotFound);
      const statsAfter = must((await t.getConversationStats({})).stats);
      assert.equal(statsAfter.totalConversations, 1n, "the idle one no longer counts");
      assert.equal(statsAfter.totalMessages, 2n);
      assert.equal(tsMs(statsAfter.oldestAccessTime), tsMs(statsAfter.newestAccessTime));
      const anew = await t.appendMessage({ contextId: idle, message: msg("i1") });
      assert.equal(anew.created, true, "an expired conversation starts anew");
      assert.equal(anew.messageCount, 1n);
      await t.deleteConversation({ contextId: busy });
      await t.deleteConversation({ contextId: idle });
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Idle conversations swept: on a server with a short idle TTL and a quick sweeper.

for (const backend of await backends()) {
  describe(`TaskService sweeper on ${backend.name}`, { skip: backend.skip }, () => {
    const fx = useTaskServer(backend, {
      AGENTSTORE_API_KEYS: TASK_KEYS_ENV,
      AGENTSTORE_TASK_SWEEP_MS: "100",
      AGENTSTORE_CONVERSATION_TTL_MS: "500",
    });

    it("the sweeper deletes the rows of an idle conversation", async () => {
      const t = fx.alpha;
      const contextId = newId("ctx");
      await t.appendMessage({ contextId, message: msg("m1") });
      await t.appendMessage({ contextId, message: msg("m2") });
      await eventually(
        () => rejectsWith(t.getConversation({ contextId }), Code.NotFound).then(() => undefined),
        EXPIRY_DEADLINE_MS,
      );
      await eventually(
        async () => assert.equal(await conversationRows(fx.server.app, "alpha", contextId), 0),
        EXPIRY_DEADLINE_MS,
      );
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Two replicas on one PostgreSQL (the PGlite data directory cannot be shared): one in this
// process (its gauges are visible), one a separate `node src/main.ts`.

const pgBackend = await postgres();
describe("TaskService across two replicas on one PostgreSQL", { skip: pgBackend.skip }, () => {
  let db: TestDatabase | undefined;
  let a: TestServer | undefined;
  let b: ServerProcess | undefined;
  let viaA: TaskClient | undefined;
  let viaB: TaskClient | undefined;
  const ta = () => must(viaA, "client of replica A").t;
  const tb = () => must(viaB, "client of replica B").t;

  before(async () => {
    db = await pgBackend.create();
    a = await startServer(db, MAIN_ENV);
    b = await spawnServer({ ...db.env, ...MAIN_ENV });
    viaA = taskClient(a.url, TENANT_KEYS.alpha);
    viaB = taskClient(b.url, TENANT_KEYS.alpha);
  });
  after(async () => {
    viaA?.close();
    viaB?.close();
    await b?.stop();
    await a?.close();
    await db?.drop();
  });

  it("a stream read on A and resumed on B from its last seq, while A keeps publishing, has every seq once, in order", async () => {
    const task = newTask(TaskState.WORKING);
    const id = must(task.id);
    await save(ta(), task);
    let published = 0;
    let writing = true;
    const writer = (async () => {
      while (writing && published < 5_000) {
        published++;
        const n = published;
        await publish(ta(), id, [
          n % 3 === 0
            ? artifactUpdate({ artifactId: "out", parts: [text(`chunk ${n}`)] }, true)
            : messageUpdate(msg(`w${n}`)),
        ]);
      }
      return publish(ta(), id, [statusUpdate(TaskState.COMPLETED)]);
    })();
    const first = follow(ta(), { taskId: id, afterSeq: 0n });
    let second: Follower | undefined;
    let final: Awaited<typeof writer> | undefined;
    try {
      await eventually(() => assert.ok(first.items.length >= 15), 30_000);
      await first.stop();
      const resumeAt = must(first.items.at(-1)).seq;
      const fromB = follow(tb(), { taskId: id, afterSeq: resumeAt });
      second = fromB;
      // B follows live while A goes on writing.
      const target = published + 20;
      await eventually(() => {
        assert.ok(!fromB.isEnded(), "B's stream ended early");
        assert.ok(fromB.items.length > 0 && Number(must(fromB.items.at(-1)).seq) >= target);
      }, 30_000);
    } finally {
      writing = false;
      final = await writer;
    }
    await endsCleanly(must(second), "B's stream after the terminal update");
    const seqs = [...seqsOf(first.items), ...seqsOf(must(second).items)];
    assert.deepEqual(seqs, range(1, Number(final.lastSeq)), "every seq once, in order, no gap");
    assert.equal(must(second).items.at(-1)?.update.case, "statusUpdate");
    const messages = [...first.items, ...must(second).items].flatMap((e) =>
      e.update.case === "message" ? [e.update.value.messageId] : [],
    );
    assert.deepEqual(
      messages,
      range(1, published)
        .filter((n) => n % 3 !== 0)
        .map((n) => `w${n}`),
    );
  });

  it("a long poll on A is answered by a write on B; a stream on B ends with NOT_FOUND when A deletes the task", async () => {
    const app = must(a).app;
    const task = newTask(TaskState.WORKING);
    const id = must(task.id);
    await save(tb(), task);
    const baseline = taskWaiters(app) ?? 0;
    const poll = ta().getTask({ id, waitForGenerationAfter: 1n, timeout: ms(60_000) });
    if (taskWaiters(app) !== undefined) await eventually(() => assert.equal(taskWaiters(app), baseline + 1));
    await publish(tb(), id, [messageUpdate(msg("from B"))]);
    const woken = must((await poll).task);
    assert.equal(woken.generation, 2n);
    assert.deepEqual(historyIds(woken), ["from B"]);

    const onB = follow(tb(), { taskId: id });
    await eventually(() => assert.equal(onB.items.length, 1));
    await ta().deleteTask({ id });
    const err = await within(onB.ended, EXPIRY_DEADLINE_MS, "B's stream of the deleted task");
    assert.equal(err === undefined ? "ended cleanly" : Code[err.code], Code[Code.NotFound]);
    await rejectsWith(tb().getTask({ id }), Code.NotFound);
  });
});
