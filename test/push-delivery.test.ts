import assert from "node:assert/strict";
import { randomBytes, randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { type Timestamp, timestampDate } from "@bufbuild/protobuf/wkt";
import type { Client } from "@connectrpc/connect";
import { Code } from "@connectrpc/connect";
import { Role, TaskState } from "../gen/agentstore/v1/a2a_task_pb.ts";
import { PushDeliveryState } from "../gen/agentstore/v1/push_delivery_pb.ts";
import { TaskService } from "../gen/agentstore/v1/task_service_pb.ts";
import { postJson } from "../src/core/outbound-http.ts";
import { eventually, range, rejectsWith } from "./helpers/assertions.ts";
import { serviceClient } from "./helpers/connect.ts";
import { backends, type TestDatabase } from "./helpers/databases.ts";
import { Receiver } from "./helpers/receiver.ts";
import {
  API_KEYS_ENV,
  KEYS,
  type ServerProcess,
  spawnServer,
  startServer,
  type TestServer,
} from "./helpers/servers.ts";

/**
 * Durable push delivery over real gRPC and real HTTP, on PGlite and on PostgreSQL: every update of
 * a task reaches each of its push configs' receivers once and in seq order, through retries,
 * dead deliveries and redrives, a kill -9 of the sending server, and (on PostgreSQL) two replicas
 * sharing the work. The receivers are local HTTP servers, so the servers allow loopback URLs.
 */

type Tasks = Client<typeof TaskService>;

/** Waits for states a loaded machine may take long to reach; never a sleep. */
const WAIT_MS = 60_000;

const KEY_ENV = `k1:${randomBytes(32).toString("base64")}`;

const BASE_ENV = {
  AGENTSTORE_API_KEYS: API_KEYS_ENV,
  AGENTSTORE_PUSH_DELIVERY: "true",
  AGENTSTORE_PUSH_ALLOW_PRIVATE_URLS: "true",
  AGENTSTORE_PUSH_CONFIG_KEYS: KEY_ENV,
  AGENTSTORE_PUSH_MAX_ATTEMPTS: "5",
  AGENTSTORE_PUSH_BACKOFF_INITIAL_MS: "50",
  AGENTSTORE_PUSH_BACKOFF_MAX_MS: "400",
  AGENTSTORE_PUSH_TIMEOUT_MS: "3000",
};

const timestampMs = (t: Timestamp | undefined) => (t === undefined ? Number.NaN : timestampDate(t).getTime());

const newId = (prefix: string) => `${prefix}-${randomUUID()}`;

const statusUpdate = (state: TaskState, text: string) => ({
  update: {
    case: "statusUpdate" as const,
    value: {
      status: {
        state,
        message: {
          messageId: newId("m"),
          role: Role.AGENT,
          parts: [{ content: { case: "text" as const, value: text } }],
        },
      },
    },
  },
});

async function newTask(t: Tasks): Promise<string> {
  const id = newId("task");
  await t.saveTask({ task: { id, contextId: id, status: { state: TaskState.SUBMITTED } } });
  return id;
}

async function addConfig(t: Tasks, taskId: string, url: string, token = newId("tok")) {
  const { config } = await t.createPushConfig({
    config: { taskId, url, token, authentication: { scheme: "Bearer", credentials: `cred-${token}` } },
  });
  return { id: config?.id ?? "", token };
}

async function publish(t: Tasks, taskId: string, texts: string[], state = TaskState.WORKING): Promise<void> {
  await t.publishTaskUpdate({
    taskId,
    updates: texts.map((text) => statusUpdate(state, text)),
  });
}

async function deliveries(
  t: Tasks,
  taskId: string,
  configId: string,
  state: PushDeliveryState = PushDeliveryState.UNSPECIFIED,
) {
  const all = [];
  let pageToken = "";
  do {
    const page = await t.listPushDeliveries({ taskId, configId, state, pageSize: 7, pageToken });
    all.push(...page.deliveries);
    pageToken = page.nextPageToken;
  } while (pageToken !== "");
  return all;
}

const STATE_NAMES: Record<number, string> = {
  [PushDeliveryState.PENDING]: "PENDING",
  [PushDeliveryState.SENDING]: "SENDING",
  [PushDeliveryState.DELIVERED]: "DELIVERED",
  [PushDeliveryState.DEAD]: "DEAD",
};

const stateCounts = (list: Array<{ state: PushDeliveryState }>) => {
  const counts: Record<string, number> = {};
  for (const d of list) {
    const name = STATE_NAMES[d.state] ?? String(d.state);
    counts[name] = (counts[name] ?? 0) + 1;
  }
  return counts;
};

/** The first time each seq arrived, in arrival order: what an ordered receiver acts on. */
const firstArrivals = (seqs: number[]) => seqs.filter((seq, i) => seqs.indexOf(seq) === i);

// Awaited once, before any suite is declared: under `node --test`, suites declared after an await
// that follows a finished suite may never run.
const BACKENDS = await backends();

for (const backend of BACKENDS) {
  describe(`push delivery on ${backend.name}`, { skip: backend.skip }, () => {
    let db: TestDatabase;
    let server: TestServer;
    let alpha: ReturnType<typeof serviceClient<typeof TaskService>>;
    let beta: ReturnType<typeof serviceClient<typeof TaskService>>;
    let receiver: Receiver;
    before(async () => {
      db = await backend.create();
      server = await startServer(db, BASE_ENV);
      alpha = serviceClient(TaskService, server.url, KEYS.alpha);
      beta = serviceClient(TaskService, server.url, KEYS.beta);
      receiver = await new Receiver().listen();
    });
    after(async () => {
      alpha?.close();
      beta?.close();
      await server?.close();
      await receiver?.close();
      await db?.drop();
    });

    it("every update reaches each config once, in seq order, as an A2A StreamResponse with the config's token and authentication", async () => {
      const t = alpha.client;
      const taskId = await newTask(t);
      const one = await addConfig(t, taskId, receiver.url(`/one/${taskId}`));
      const two = await addConfig(t, taskId, receiver.url(`/two/${taskId}`));
      // seq 1 was the first save, before any config: it is not delivered.
      for (const i of range(0, 9)) await publish(t, taskId, [`a${i}`, `b${i}`, `c${i}`]);
      await t.saveTask({ task: { id: taskId, contextId: taskId, status: { state: TaskState.COMPLETED } } });
      const expected = range(2, 32);
      await eventually(() => {
        assert.deepEqual(receiver.seqs(`/one/${taskId}`), expected);
        assert.deepEqual(receiver.seqs(`/two/${taskId}`), expected);
      }, WAIT_MS);

      const firstOfOne = receiver.received.find((r) => r.path === `/one/${taskId}` && r.seq === 2);
      assert.ok(firstOfOne);
      assert.equal(firstOfOne.headers["content-type"], "application/json");
      assert.equal(firstOfOne.headers["x-a2a-notification-token"], one.token);
      assert.equal(firstOfOne.headers["a2a-notification-token"], one.token);
      assert.equal(firstOfOne.headers.authorization, `Bearer cred-${one.token}`);
      const event = firstOfOne.body.statusUpdate as Record<string, unknown>;
      assert.deepEqual(
        Object.keys(firstOfOne.body),
        ["statusUpdate"],
        "a StreamResponse holds the event only",
      );
      assert.equal(event.taskId, taskId);
      assert.equal((event.status as Record<string, unknown>).state, "TASK_STATE_WORKING");
      const secondOfTwo = receiver.received.find((r) => r.path === `/two/${taskId}` && r.seq === 3);
      assert.equal(secondOfTwo?.headers["x-a2a-notification-token"], two.token);
      const last = receiver.received.find((r) => r.path === `/one/${taskId}` && r.seq === 32);
      assert.equal(
        (
          (last?.body.task as Record<string, unknown> | undefined)?.status as
            | Record<string, unknown>
            | undefined
        )?.state,
        "TASK_STATE_COMPLETED",
        "a SaveTask goes out as the task",
      );

      // The history: all DELIVERED, by seq, one attempt each, with the receiver's status.
      await eventually(async () => {
        const history = await deliveries(t, taskId, one.id);
        assert.deepEqual(
          history.map((d) => Number(d.seq)),
          expected,
        );
        for (const d of history) {
          assert.equal(d.state, PushDeliveryState.DELIVERED);
          assert.equal(d.attempts, 1);
          assert.equal(d.lastStatusCode, 200);
          assert.equal(d.taskId, taskId);
          assert.equal(d.configId, one.id);
          assert.ok(d.deliverTime !== undefined && d.createTime !== undefined);
        }
      }, WAIT_MS);
      const ids = new Set(
        receiver.received.filter((r) => r.path === `/one/${taskId}`).map((r) => r.deliveryId),
      );
      assert.equal(ids.size, expected.length, "each request names its own delivery");
    });

    it("a receiver that fails for a while, then recovers: retried with backoff, nothing lost, order kept", async () => {
      const t = alpha.client;
      const taskId = await newTask(t);
      const path = `/flaky/${taskId}`;
      let failures = 0;
      receiver.answer = (r) => {
        if (r.path === path && failures < 3) {
          failures++;
          return failures === 2 ? { status: 429, headers: { "retry-after": "0" } } : 503;
        }
        return 200;
      };
      try {
        const config = await addConfig(t, taskId, receiver.url(path));
        await publish(t, taskId, ["x", "y", "z"]);
        await eventually(() => assert.deepEqual(firstArrivals(receiver.seqs(path)), [2, 3, 4]), WAIT_MS);
        assert.deepEqual(
          receiver.seqs(path),
          [2, 2, 2, 2, 3, 4],
          "seq 2 is retried until it passes; 3 waits for it",
        );
        await eventually(async () => {
          const [first, ...rest] = await deliveries(t, taskId, config.id);
          assert.equal(first?.state, PushDeliveryState.DELIVERED);
          assert.equal(first?.attempts, 4);
          assert.equal(first?.lastError, "");
          assert.deepEqual(
            rest.map((d) => [d.state, d.attempts]),
            [
              [PushDeliveryState.DELIVERED, 1],
              [PushDeliveryState.DELIVERED, 1],
            ],
          );
        }, WAIT_MS);
      } finally {
        receiver.answer = () => 200;
      }
    });

    it("a receiver that is down (connection refused) and comes up on its port: the deliveries wait and then arrive in order", async () => {
      const t = alpha.client;
      const late = new Receiver();
      // A port nobody listens on yet.
      const probe = await new Receiver().listen();
      const port = probe.port;
      await probe.close();
      const taskId = await newTask(t);
      const config = await addConfig(t, taskId, `http://127.0.0.1:${port}/late`);
      await publish(t, taskId, ["p", "q"]);
      await eventually(async () => {
        const [head, follower] = await deliveries(t, taskId, config.id);
        assert.ok((head?.attempts ?? 0) >= 2, "retried at least once");
        assert.equal(head?.state, PushDeliveryState.PENDING);
        assert.match(head?.lastError ?? "", /ECONNREFUSED/);
        assert.equal(head?.lastStatusCode, 0);
        // The follower waits for its turn, not for a time.
        assert.equal(follower?.attempts, 0);
        assert.equal(follower?.state, PushDeliveryState.PENDING);
        assert.equal(follower?.nextAttemptTime, undefined);
        assert.ok(Number.isFinite(timestampMs(head?.nextAttemptTime)), "the head has its retry time");
      }, WAIT_MS);
      try {
        await late.listen(port);
        await eventually(() => assert.deepEqual(late.seqs("/late"), [2, 3]), WAIT_MS);
      } finally {
        await late.close();
      }
    });

    it("a delivery that runs out of attempts is DEAD, does not hold back the later ones, and is sent again after a redrive", async () => {
      const t = alpha.client;
      const taskId = await newTask(t);
      const path = `/dead/${taskId}`;
      receiver.answer = (r) => (r.path === path && r.seq === 3 ? 500 : 200);
      try {
        const config = await addConfig(t, taskId, receiver.url(path));
        await publish(t, taskId, ["one"]);
        await publish(t, taskId, ["two"]);
        await publish(t, taskId, ["three"]);
        await eventually(() => assert.deepEqual(receiver.seqs(path), [2, 3, 3, 3, 3, 3, 4]), WAIT_MS);
        const dead = await deliveries(t, taskId, config.id, PushDeliveryState.DEAD);
        assert.deepEqual(
          dead.map((d) => [Number(d.seq), d.attempts, d.maxAttempts, d.lastStatusCode]),
          [[3, 5, 5, 500]],
        );
        assert.match(dead[0]?.lastError ?? "", /answered 500/);
        assert.doesNotMatch(dead[0]?.lastError ?? "", /dead\//, "the URL's path stays out of the error");
        await eventually(async () =>
          assert.deepEqual(stateCounts(await deliveries(t, taskId, config.id)), { DELIVERED: 2, DEAD: 1 }),
        );

        receiver.answer = () => 200;
        const { deliveries: redriven } = await t.redrivePushDeliveries({ taskId, configId: config.id });
        assert.deepEqual(
          redriven.map((d) => [Number(d.seq), d.state, d.attempts]),
          [[3, PushDeliveryState.PENDING, 0]],
        );
        await eventually(() => assert.deepEqual(receiver.seqs(path).slice(-1), [3]), WAIT_MS);
        await eventually(async () =>
          assert.deepEqual(stateCounts(await deliveries(t, taskId, config.id)), { DELIVERED: 3 }),
        );
        // Nothing left to redrive; a named id that is not DEAD is left alone.
        const again = await t.redrivePushDeliveries({
          taskId,
          configId: config.id,
          deliveryIds: [dead[0]?.id ?? ""],
        });
        assert.deepEqual(again.deliveries, []);
      } finally {
        receiver.answer = () => 200;
      }
    });

    it("refusals for good are DEAD at the first attempt: a 4xx, and a redirect (never followed, not even to a public address)", async () => {
      const t = alpha.client;
      const taskId = await newTask(t);
      const target = await new Receiver().listen();
      receiver.answer = (r) => {
        if (r.path === `/bad/${taskId}`) return 400;
        if (r.path === `/moved/${taskId}`)
          return { status: 307, headers: { location: target.url("/elsewhere") } };
        return 200;
      };
      try {
        const bad = await addConfig(t, taskId, receiver.url(`/bad/${taskId}`));
        const moved = await addConfig(t, taskId, receiver.url(`/moved/${taskId}`));
        await publish(t, taskId, ["once"]);
        for (const [config, status] of [
          [bad, 400],
          [moved, 307],
        ] as const) {
          await eventually(async () => {
            const [d] = await deliveries(t, taskId, config.id);
            assert.equal(d?.state, PushDeliveryState.DEAD);
            assert.equal(d?.attempts, 1);
            assert.equal(d?.lastStatusCode, status);
          }, WAIT_MS);
        }
        assert.match(
          (await deliveries(t, taskId, moved.id))[0]?.lastError ?? "",
          /redirects are not followed/,
        );
        assert.equal(target.received.length, 0, "the redirect's target was never contacted");
      } finally {
        receiver.answer = () => 200;
        await target.close();
      }
    });

    it("deliveries go with their config and their task; the history RPCs answer NOT_FOUND then, and to another tenant", async () => {
      const t = alpha.client;
      const taskId = await newTask(t);
      const hold = `/held/${taskId}`;
      // Held: the deliveries stay PENDING behind the first.
      receiver.answer = (r) => (r.path === hold ? "hold" : 200);
      try {
        const config = await addConfig(t, taskId, receiver.url(hold));
        await publish(t, taskId, ["1", "2", "3"]);
        await eventually(() => assert.deepEqual(receiver.seqs(hold), [2]), WAIT_MS);
        assert.equal((await deliveries(t, taskId, config.id)).length, 3);
        const other = beta.client;
        await rejectsWith(other.listPushDeliveries({ taskId, configId: config.id }), Code.NotFound);
        await rejectsWith(other.redrivePushDeliveries({ taskId, configId: config.id }), Code.NotFound);
        await rejectsWith(
          t.listPushDeliveries({ taskId, configId: "nope" }),
          Code.NotFound,
          "PUSH_CONFIG_NOT_FOUND",
        );
        await t.deletePushConfig({ taskId, id: config.id });
        await rejectsWith(
          t.listPushDeliveries({ taskId, configId: config.id }),
          Code.NotFound,
          "PUSH_CONFIG_NOT_FOUND",
        );
        const kept = await addConfig(t, taskId, receiver.url(`/kept/${taskId}`));
        await publish(t, taskId, ["4"]);
        await eventually(() => assert.deepEqual(receiver.seqs(`/kept/${taskId}`), [5]), WAIT_MS);
        await t.deleteTask({ id: taskId });
        await rejectsWith(
          t.listPushDeliveries({ taskId, configId: kept.id }),
          Code.NotFound,
          "A2A_TASK_NOT_FOUND",
        );
        // (The first may have been sent again after its timeout, before the config went.)
        assert.deepEqual(
          new Set(receiver.seqs(hold)),
          new Set([2]),
          "the deleted config's later deliveries were never sent",
        );
      } finally {
        receiver.answer = () => 200;
      }
    });

    it("SaveTask with push configs creates them in the save's transaction: the save itself is delivered; a bad config fails the whole save", async () => {
      const t = alpha.client;
      const taskId = newId("task");
      const path = `/inline/${taskId}`;
      const saved = await t.saveTask({
        task: { id: taskId, contextId: taskId, status: { state: TaskState.SUBMITTED } },
        pushConfigs: [{ taskId, url: receiver.url(path), token: "inline-token" }],
      });
      const [config] = saved.pushConfigs;
      assert.match(config?.id ?? "", /^[0-9a-f-]{36}$/, "an id is assigned");
      assert.equal(config?.token, "inline-token");
      await publish(t, taskId, ["next"]);
      await eventually(() => assert.deepEqual(receiver.seqs(path), [1, 2]), WAIT_MS);
      assert.deepEqual(Object.keys(receiver.received.find((r) => r.path === path)?.body ?? {}), ["task"]);
      assert.equal((await t.getPushConfig({ taskId, id: config?.id ?? "" })).config?.url, receiver.url(path));

      const other = newId("task");
      await rejectsWith(
        t.saveTask({
          task: { id: other, status: { state: TaskState.SUBMITTED } },
          pushConfigs: [{ taskId: "someone-else", url: receiver.url("/x") }],
        }),
        Code.InvalidArgument,
      );
      await rejectsWith(
        t.saveTask({
          task: { id: other, status: { state: TaskState.SUBMITTED } },
          pushConfigs: [{ taskId: other, url: "ftp://example.com/hook" }],
        }),
        Code.InvalidArgument,
        "PUSH_URL_REFUSED",
      );
      await rejectsWith(t.getTask({ id: other }), Code.NotFound, "A2A_TASK_NOT_FOUND");
    });

    it("bad requests: INVALID_ARGUMENT for a state out of range and ids that are not UUIDs", async () => {
      const t = alpha.client;
      const taskId = await newTask(t);
      const config = await addConfig(t, taskId, receiver.url("/x"));
      await rejectsWith(
        t.listPushDeliveries({ taskId, configId: config.id, state: 9 as PushDeliveryState }),
        Code.InvalidArgument,
      );
      await rejectsWith(
        t.redrivePushDeliveries({ taskId, configId: config.id, deliveryIds: ["not-a-uuid"] }),
        Code.InvalidArgument,
      );
      await rejectsWith(
        t.listPushDeliveries({ taskId, configId: config.id, pageToken: "forged" }),
        Code.InvalidArgument,
      );
    });

    it("a server killed with SIGKILL in the middle of a delivery: after a restart the delivery is sent again, then the rest, in order", async () => {
      const dbOfProcess = await backend.create();
      const env = { ...BASE_ENV, ...dbOfProcess.env, AGENTSTORE_PUSH_TIMEOUT_MS: "1000" };
      const crashReceiver = await new Receiver().listen();
      let serverProcess: ServerProcess | undefined = await spawnServer(env);
      let client = serviceClient(TaskService, serverProcess.url, KEYS.alpha);
      try {
        crashReceiver.answer = () => "hold";
        const taskId = await newTask(client.client);
        const config = await addConfig(client.client, taskId, crashReceiver.url("/crash"));
        await publish(client.client, taskId, ["a", "b", "c"]);
        await eventually(() => assert.deepEqual(crashReceiver.seqs("/crash"), [2]), WAIT_MS);
        assert.equal(await serverProcess.stop("SIGKILL"), "SIGKILL");
        client.close();
        crashReceiver.answer = () => 200;
        serverProcess = await spawnServer(env);
        client = serviceClient(TaskService, serverProcess.url, KEYS.alpha);
        // The dead sender's lease (timeout + 5 s) runs out; then seq 2 goes again, then 3 and 4.
        await eventually(() => assert.deepEqual(crashReceiver.seqs("/crash"), [2, 2, 3, 4]), WAIT_MS);
        await eventually(async () => {
          const history = await deliveries(client.client, taskId, config.id);
          assert.deepEqual(
            history.map((d) => [Number(d.seq), d.state, d.attempts]),
            [
              [2, PushDeliveryState.DELIVERED, 2],
              [3, PushDeliveryState.DELIVERED, 1],
              [4, PushDeliveryState.DELIVERED, 1],
            ],
          );
        }, WAIT_MS);
      } finally {
        client.close();
        await serverProcess?.stop("SIGKILL");
        await crashReceiver.close();
        await dbOfProcess.drop();
      }
    });

    if (backend.name === "postgres") {
      it("two replicas share the work: each update of many tasks reaches its receiver exactly once, in order per task", async () => {
        const second = await startServer(db, BASE_ENV);
        const viaSecond = serviceClient(TaskService, second.url, KEYS.alpha);
        try {
          const taskIds: string[] = [];
          for (const i of range(1, 12)) {
            const t = i % 2 === 0 ? alpha.client : viaSecond.client;
            const taskId = await newTask(t);
            await addConfig(t, taskId, receiver.url(`/replicas/${taskId}`));
            taskIds.push(taskId);
          }
          await Promise.all(
            taskIds.map(async (taskId, i) => {
              const t = i % 2 === 0 ? alpha.client : viaSecond.client;
              for (const round of range(1, 5)) await publish(t, taskId, [`r${round}a`, `r${round}b`]);
            }),
          );
          for (const taskId of taskIds) {
            await eventually(
              () => assert.deepEqual(receiver.seqs(`/replicas/${taskId}`), range(2, 11)),
              WAIT_MS,
            );
          }
        } finally {
          viaSecond.close();
          await second.close();
        }
      });
    }
  });
}

for (const backend of BACKENDS) {
  describe(`push delivery retention on ${backend.name}`, { skip: backend.skip }, () => {
    let db: TestDatabase;
    let server: TestServer;
    let alpha: ReturnType<typeof serviceClient<typeof TaskService>>;
    let receiver: Receiver;
    before(async () => {
      db = await backend.create();
      server = await startServer(db, {
        ...BASE_ENV,
        AGENTSTORE_PUSH_DELIVERED_RETENTION_MS: "300",
        AGENTSTORE_TASK_SWEEP_MS: "100",
      });
      alpha = serviceClient(TaskService, server.url, KEYS.alpha);
      receiver = await new Receiver().listen();
    });
    after(async () => {
      alpha?.close();
      await server?.close();
      await receiver?.close();
      await db?.drop();
    });

    it("DELIVERED deliveries leave the history after the retention; DEAD ones stay", async () => {
      const t = alpha.client;
      const taskId = await newTask(t);
      receiver.answer = (r) => (r.path === "/refused" ? 400 : 200);
      const ok = await addConfig(t, taskId, receiver.url("/ok"));
      const refused = await addConfig(t, taskId, receiver.url("/refused"));
      await publish(t, taskId, ["a", "b", "c"]);
      await eventually(() => assert.deepEqual(receiver.seqs("/ok"), [2, 3, 4]), WAIT_MS);
      await eventually(async () => assert.deepEqual(await deliveries(t, taskId, ok.id), []), WAIT_MS);
      await eventually(
        async () => assert.deepEqual(stateCounts(await deliveries(t, taskId, refused.id)), { DEAD: 3 }),
        WAIT_MS,
      );
      // The queue still works after its history is gone.
      await publish(t, taskId, ["d"]);
      await eventually(() => assert.deepEqual(receiver.seqs("/ok"), [2, 3, 4, 5]), WAIT_MS);
    });
  });
}

describe("outbound POST (the sender's own guard)", () => {
  let receiver: Receiver;
  before(async () => {
    receiver = await new Receiver().listen();
  });
  after(async () => {
    await receiver?.close();
  });
  const options = { timeoutMs: 2_000, maxResponseBytes: 1024, allowPrivate: false };

  it("refuses a name that resolves to a loopback address at connect time (DNS rebinding), and never connects", async () => {
    const outcome = await postJson(
      `http://rebound.example:${receiver.port}/hook`,
      "{}",
      {},
      {
        ...options,
        lookup: async () => [{ address: "127.0.0.1" }],
      },
    );
    assert.equal(outcome.ok, false);
    assert.equal(!outcome.ok && outcome.permanent, true);
    assert.match(!outcome.ok ? outcome.error : "", /resolves to 127\.0\.0\.1/);
    const literal = await postJson(receiver.url("/hook"), "{}", {}, options);
    assert.equal(!literal.ok && literal.permanent, true);
    const mapped = await postJson(`http://[::ffff:127.0.0.1]:${receiver.port}/hook`, "{}", {}, options);
    assert.equal(!mapped.ok && mapped.permanent, true);
    assert.equal(receiver.received.length, 0);
  });

  it("allowed private addresses: the POST goes out; an answer is cut at the cap; a receiver that never answers times out (retryable)", async () => {
    const allowed = { ...options, allowPrivate: true };
    receiver.answer = () => 204;
    assert.deepEqual(await postJson(receiver.url("/ok"), '{"a":1}', {}, allowed), { ok: true, status: 204 });
    assert.deepEqual(receiver.received.at(-1)?.body, { a: 1 });
    receiver.answer = () => ({ status: 200, body: "x".repeat(32 * 1024 * 1024) });
    assert.deepEqual(await postJson(receiver.url("/big"), "{}", {}, allowed), { ok: true, status: 200 });
    await eventually(() => assert.equal(receiver.cutOff, 1, "the 32 MiB answer was cut off"));
    receiver.answer = () => "hold";
    const slow = await postJson(receiver.url("/slow"), "{}", {}, { ...allowed, timeoutMs: 200 });
    assert.equal(slow.ok, false);
    assert.equal(!slow.ok && slow.permanent, false);
    assert.match(!slow.ok ? slow.error : "", /no answer within 200 ms/);
    const badHeader = await postJson(
      receiver.url("/h"),
      "{}",
      { authorization: "Bearer a\r\nX: y" },
      allowed,
    );
    assert.equal(!badHeader.ok && badHeader.permanent, true);
    assert.doesNotMatch(!badHeader.ok ? badHeader.error : "", /Bearer/);
    receiver.answer = () => 200;
  });
});
