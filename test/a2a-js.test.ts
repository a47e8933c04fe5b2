import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import type {
  AgentCard,
  Artifact as SdkArtifact,
  Message as SdkMessage,
  Task as SdkTask,
  TaskPushNotificationConfig as SdkTaskPushNotificationConfig,
  StreamResponse,
} from "@a2a-js/sdk";
import { ClientFactory, ClientFactoryOptions } from "@a2a-js/sdk/client";
import { GrpcTransportFactory } from "@a2a-js/sdk/client/grpc";
import {
  type AgentExecutor,
  DefaultRequestHandler,
  type ExecutionEventBus,
  type RequestContext,
  ServerCallContext,
} from "@a2a-js/sdk/server";
import { A2AService, grpcService, UserBuilder } from "@a2a-js/sdk/server/grpc";
import { Code, ConnectError } from "@connectrpc/connect";
import * as grpc from "@grpc/grpc-js";
import { TaskState } from "../gen/agentstore/v1/a2a_task_pb.ts";
import {
  AgentStorePushNotificationStore,
  type AgentStoreTaskStore,
  createAgentStoreA2A,
  messageFromStore,
  messageToStore,
  pushConfigFromStore,
  pushConfigToStore,
  taskFromStore,
  taskToStore,
} from "../src/a2a-js/index.ts";
import { type AgentStoreClient, createClient } from "../src/client/index.ts";
import { eventually } from "./helpers/assertions.ts";
import { type Backend, backends, type TestDatabase } from "./helpers/databases.ts";
import { Receiver } from "./helpers/receiver.ts";
import { startServer, type TestServer } from "./helpers/servers.ts";

/**
 * The a2a-js adapter: conversions, and real @a2a-js/sdk servers (DefaultRequestHandler behind the
 * SDK's gRPC transport) on agentstore over gRPC.
 */

const SDK = { SUBMITTED: 1, WORKING: 2, COMPLETED: 3, CANCELED: 5, USER: 1, AGENT: 2 } as const;

function textPart(text: string) {
  return {
    content: { $case: "text" as const, value: text },
    metadata: undefined,
    filename: "",
    mediaType: "text/plain",
  };
}

function sdkMessage(init: Partial<SdkMessage> & { text: string }): SdkMessage {
  return {
    messageId: init.messageId ?? randomUUID(),
    contextId: init.contextId ?? "",
    taskId: init.taskId ?? "",
    role: (init.role ?? SDK.USER) as SdkMessage["role"],
    parts: [textPart(init.text)],
    metadata: init.metadata,
    extensions: init.extensions ?? [],
    referenceTaskIds: init.referenceTaskIds ?? [],
  };
}

function sdkArtifact(id: string, text: string): SdkArtifact {
  return {
    artifactId: id,
    name: "out",
    description: "",
    parts: [textPart(text)],
    metadata: undefined,
    extensions: [],
  };
}

// ---------------------------------------------------------------------------------------------
// Conversions

// Awaited before the first describe: under `node --test`, a file whose first suite has finished
// while the module still awaits is taken as done, and suites declared after the await never ran.
const BACKENDS = await backends();

describe("a2a-js conversions", () => {
  it("round-trips a task with every part kind, metadata, history and artifacts", () => {
    const task: SdkTask = {
      id: "t-1",
      contextId: "c-1",
      status: {
        state: SDK.WORKING as SdkTask["status"] extends infer S
          ? S extends { state: infer T }
            ? T
            : never
          : never,
        message: sdkMessage({ messageId: "m-status", role: SDK.AGENT as SdkMessage["role"], text: "on it" }),
        timestamp: "2025-01-02T03:04:05.678Z",
      },
      artifacts: [
        {
          artifactId: "a-1",
          name: "report",
          description: "the report",
          parts: [
            textPart("hello"),
            {
              content: { $case: "raw", value: Buffer.from([1, 2, 3]) },
              metadata: { k: 1 },
              filename: "x.bin",
              mediaType: "application/octet-stream",
            },
            {
              content: { $case: "url", value: "https://example.com/f.png" },
              metadata: undefined,
              filename: "f.png",
              mediaType: "image/png",
            },
            {
              content: { $case: "data", value: { a: [1, "two", null, true], b: { c: 2.5 } } },
              metadata: undefined,
              filename: "",
              mediaType: "application/json",
            },
          ],
          metadata: { source: "test" },
          extensions: ["urn:ext"],
        },
      ],
      history: [
        sdkMessage({
          messageId: "m-1",
          contextId: "c-1",
          taskId: "t-1",
          text: "hi",
          referenceTaskIds: ["t-0"],
          extensions: ["urn:e"],
          metadata: { x: "y" },
        }),
      ],
      metadata: { nested: { list: [1, 2] }, flag: false },
    };
    const stored = taskToStore(task);
    assert.equal(stored.status?.state, TaskState.WORKING);
    assert.equal(stored.artifacts[0]?.parts[1]?.content.case, "raw");
    const back = taskFromStore(stored);
    assert.deepEqual(back, task);
    // Fresh objects: changing the result leaves the stored message alone.
    back.history[0]?.parts.push(textPart("more"));
    assert.equal(stored.history[0]?.parts.length, 1);
  });

  it("maps unknown states to UNSPECIFIED and keeps message fields", () => {
    const unknown = taskToStore({
      id: "t",
      contextId: "",
      status: { state: -1 as never, message: undefined, timestamp: undefined },
      artifacts: [],
      history: [],
      metadata: undefined,
    });
    assert.equal(unknown.status?.state, TaskState.UNSPECIFIED);
    const message = sdkMessage({ messageId: "m", contextId: "c", taskId: "t", text: "x" });
    assert.deepEqual(messageFromStore(messageToStore(message)), message);
  });

  it("round-trips push configs (the tenant is not kept)", () => {
    const config = {
      tenant: "",
      id: "p-1",
      taskId: "t-1",
      url: "https://example.com/hook",
      token: "tok",
      authentication: { scheme: "Bearer", credentials: "secret" },
    };
    assert.deepEqual(pushConfigFromStore(pushConfigToStore("t-1", config)), config);
  });
});

// ---------------------------------------------------------------------------------------------
// Real a2a-js servers on agentstore

/** A gate the executor waits at, so that a test can act while a task is live. */
class Gate {
  #open: () => void = () => {};
  readonly opened = new Promise<void>((resolve) => {
    this.#open = resolve;
  });
  open() {
    this.#open();
  }
}

/** Publishes task(submitted) -> working -> [gate] -> artifact chunk 1 -> chunk 2 (append) -> completed. */
class TrivialExecutor implements AgentExecutor {
  gate: Gate | undefined;

  async execute(context: RequestContext, bus: ExecutionEventBus): Promise<void> {
    const { taskId, contextId } = context;
    if (context.task === undefined) {
      bus.publish({
        kind: "task",
        data: {
          id: taskId,
          contextId,
          status: { state: SDK.SUBMITTED as never, message: undefined, timestamp: new Date().toISOString() },
          artifacts: [],
          history: [context.userMessage],
          metadata: undefined,
        },
      });
    }
    const status = (state: number) =>
      bus.publish({
        kind: "statusUpdate",
        data: {
          taskId,
          contextId,
          status: { state: state as never, message: undefined, timestamp: new Date().toISOString() },
          metadata: undefined,
        },
      });
    status(SDK.WORKING);
    await this.gate?.opened;
    bus.publish({
      kind: "artifactUpdate",
      data: {
        taskId,
        contextId,
        artifact: sdkArtifact("answer", "chunk-1"),
        append: false,
        lastChunk: false,
        metadata: undefined,
      },
    });
    bus.publish({
      kind: "artifactUpdate",
      data: {
        taskId,
        contextId,
        artifact: sdkArtifact("answer", "chunk-2"),
        append: true,
        lastChunk: true,
        metadata: undefined,
      },
    });
    status(SDK.COMPLETED);
  }

  async cancelTask(taskId: string, bus: ExecutionEventBus): Promise<void> {
    bus.publish({
      kind: "statusUpdate",
      data: {
        taskId,
        contextId: "",
        status: { state: SDK.CANCELED as never, message: undefined, timestamp: new Date().toISOString() },
        metadata: undefined,
      },
    });
  }
}

/** One "replica": an a2a-js handler on the adapter, served by the SDK's gRPC transport. */
interface Replica {
  handler: DefaultRequestHandler;
  executor: TrivialExecutor;
  taskStore: AgentStoreTaskStore;
  card: AgentCard;
  close(): Promise<void>;
}

async function startReplica(
  client: AgentStoreClient,
  options: { agentstoreDelivers?: boolean } = {},
): Promise<Replica> {
  const a2a = createAgentStoreA2A({ tasks: client.tasks, onError: () => {} });
  const executor = new TrivialExecutor();
  const card: AgentCard = {
    name: "test agent",
    description: "answers in two chunks",
    supportedInterfaces: [],
    provider: undefined,
    version: "1.0.0",
    capabilities: {
      streaming: true,
      pushNotifications: true,
      extensions: [],
      extendedAgentCard: false,
    } as never,
    securitySchemes: {},
    securityRequirements: [],
    defaultInputModes: ["text/plain"],
    defaultOutputModes: ["text/plain"],
    skills: [],
    signatures: [],
  };
  const handler = new DefaultRequestHandler(
    card,
    a2a.taskStore,
    executor,
    a2a.eventBusManager,
    a2a.pushNotificationStore,
    options.agentstoreDelivers ? a2a.pushNotificationSender : undefined,
  );
  const server = new grpc.Server();
  server.addService(
    A2AService,
    grpcService({ requestHandler: handler, userBuilder: UserBuilder.noAuthentication }),
  );
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  card.supportedInterfaces = [
    { url: `127.0.0.1:${port}`, protocolBinding: "GRPC", tenant: "", protocolVersion: "1.0" },
  ];
  return {
    handler,
    executor,
    taskStore: a2a.taskStore,
    card,
    close: () => new Promise<void>((resolve) => server.tryShutdown(() => resolve())),
  };
}

function a2aClient(card: AgentCard) {
  const factory = new ClientFactory(
    ClientFactoryOptions.createFrom(ClientFactoryOptions.default, {
      transports: [new GrpcTransportFactory()],
    }),
  );
  return factory.createFromAgentCard(card);
}

function sendRequest(text: string, returnImmediately = false, pushConfig?: SdkTaskPushNotificationConfig) {
  return {
    tenant: "",
    message: sdkMessage({ text }),
    configuration: {
      acceptedOutputModes: [],
      taskPushNotificationConfig: pushConfig,
      historyLength: undefined,
      returnImmediately,
    },
    metadata: undefined,
  };
}

const PUSH_ENV = {
  AGENTSTORE_PUSH_ALLOW_PRIVATE_URLS: "true",
  AGENTSTORE_STREAM_POLL_MS: "600000",
  AGENTSTORE_PUSH_DELIVERY: "true",
  AGENTSTORE_PUSH_BACKOFF_INITIAL_MS: "50",
  AGENTSTORE_PUSH_BACKOFF_MAX_MS: "200",
};

for (const backend of BACKENDS) {
  describeOn(backend);
}

function describeOn(backend: Backend) {
  describe(`a2a-js adapter on ${backend.name}`, { skip: backend.skip }, () => {
    let db: TestDatabase;
    let server: TestServer;
    let store: AgentStoreClient;

    before(async () => {
      db = await backend.create();
      server = await startServer(db, PUSH_ENV);
      store = createClient({ baseUrl: server.url });
    });
    after(async () => {
      store?.close();
      await server?.close();
      await db?.drop();
    });

    it("stores a task sent to an a2a-js server; a restarted server and TaskService see it", async () => {
      let replica = await startReplica(store);
      let taskId: string;
      try {
        const client = await a2aClient(replica.card);
        const result = await client.sendMessage(sendRequest("hello"));
        assert.ok("id" in result && "status" in result, "a task result");
        const task = result as SdkTask;
        taskId = task.id;
        assert.equal(task.status?.state, SDK.COMPLETED);
      } finally {
        await replica.close();
      }

      // TaskService holds it, with the appended chunk once.
      const { task: stored } = await store.tasks.getTask({ id: taskId });
      assert.equal(stored?.status?.state, TaskState.COMPLETED);
      assert.deepEqual(
        stored?.artifacts.map((a) => a.parts.map((p) => p.content.value)),
        [["chunk-1", "chunk-2"]],
      );
      assert.equal(stored?.history[0]?.parts[0]?.content.value, "hello");

      // A new a2a-js server (a restart) answers it from agentstore.
      replica = await startReplica(store);
      try {
        const client = await a2aClient(replica.card);
        const again = await client.getTask({ tenant: "", id: taskId, historyLength: undefined });
        assert.equal(again.id, taskId);
        assert.equal(again.status?.state, SDK.COMPLETED);
        assert.deepEqual(
          again.artifacts.map((a) =>
            a.parts.map((p) => (p.content?.$case === "text" ? p.content.value : "")),
          ),
          [["chunk-1", "chunk-2"]],
        );
        // Loads answer fresh objects.
        const ctx = new ServerCallContext();
        const one = await replica.taskStore.load(taskId, ctx);
        const two = await replica.taskStore.load(taskId, ctx);
        assert.notEqual(one, two);
        one?.history.pop();
        assert.equal(two?.history.length, again.history.length);
        // list pages with agentstore's tokens.
        const page = await replica.taskStore.list(
          {
            tenant: "",
            contextId: "",
            status: SDK.COMPLETED as never,
            pageSize: 1,
            pageToken: "",
            statusTimestampAfter: undefined,
          },
          ctx,
        );
        assert.equal(page.tasks[0]?.id, taskId);
        assert.equal(page.tasks[0]?.artifacts.length, 0, "no artifacts unless asked");
      } finally {
        await replica.close();
      }
    });

    it("two a2a-js servers on one agentstore: a resubscribe on the second gets every event once", async () => {
      const a = await startReplica(store);
      const b = await startReplica(store);
      try {
        const gate = new Gate();
        a.executor.gate = gate;
        const clientA = await a2aClient(a.card);
        const clientB = await a2aClient(b.card);

        // Sent to A: the executor stops after "working" until the gate opens.
        const streamA = clientA.sendMessageStream(sendRequest("work"));
        let taskId = "";
        const seenA: StreamResponse[] = [];
        const drainA = (async () => {
          for await (const item of streamA) {
            seenA.push(item);
            if (item.payload?.$case === "task") taskId = item.payload.value.id;
          }
        })();
        const deadline = Date.now() + 10_000;
        while (Date.now() < deadline) {
          if (taskId !== "") {
            const { task } = await store.tasks.getTask({ id: taskId }).catch(() => ({ task: undefined }));
            if (task?.status?.state === TaskState.WORKING) break;
          }
          await new Promise((r) => setTimeout(r, 20));
        }
        assert.notEqual(taskId, "", "A answered the task");

        // Resubscribe on B: the task as it is, then every later event, once.
        const seenB: StreamResponse[] = [];
        const streamB = clientB.resubscribeTask({ tenant: "", id: taskId });
        const first = await streamB.next();
        assert.equal(first.done, false);
        if (!first.done) seenB.push(first.value);
        assert.equal(first.value?.payload?.$case, "task");
        gate.open();
        for await (const item of streamB) seenB.push(item);
        await drainA;

        const summary = (items: StreamResponse[]) =>
          items.map((item) => {
            const p = item.payload;
            if (p?.$case === "task") return `task:${p.value.status?.state}`;
            if (p?.$case === "statusUpdate") return `status:${p.value.status?.state}`;
            if (p?.$case === "artifactUpdate")
              return `artifact:${p.value.artifact?.parts.map((x) => (x.content?.$case === "text" ? x.content.value : "")).join()}`;
            return p?.$case ?? "?";
          });
        assert.deepEqual(summary(seenB), [
          "task:2",
          "artifact:chunk-1",
          "artifact:chunk-2",
          `status:${SDK.COMPLETED}`,
        ]);
        assert.ok(summary(seenA).includes(`status:${SDK.COMPLETED}`), `A saw the end: ${summary(seenA)}`);

        const { task } = await store.tasks.getTask({ id: taskId });
        assert.equal(task?.status?.state, TaskState.COMPLETED);
        assert.deepEqual(
          task?.artifacts.map((x) => x.parts.map((p) => p.content.value)),
          [["chunk-1", "chunk-2"]],
        );
      } finally {
        await a.close();
        await b.close();
      }
    });

    it("a push config given with message/send: agentstore delivers every event of the new task once, in order, and the SDK sends none itself", async () => {
      const receiver = await new Receiver().listen();
      const replica = await startReplica(store, { agentstoreDelivers: true });
      try {
        const client = await a2aClient(replica.card);
        const token = `tok-${randomUUID()}`;
        const result = await client.sendMessage(
          sendRequest("notify me", false, {
            tenant: "",
            id: "",
            taskId: "",
            url: receiver.url("/a2a-hook"),
            token,
            authentication: undefined,
          }),
        );
        const task = result as SdkTask;
        assert.equal(task.status?.state, SDK.COMPLETED);
        const cases = ["task", "statusUpdate", "artifactUpdate", "artifactUpdate", "statusUpdate"];
        await eventually(() => assert.equal(receiver.received.length, cases.length), 60_000);
        assert.deepEqual(
          receiver.seqs("/a2a-hook"),
          [1, 2, 3, 4, 5],
          "every entry of the task's log from its first save, once, in order (none from the SDK's sender)",
        );
        assert.deepEqual(
          receiver.received.map((r) => Object.keys(r.body)),
          cases.map((c) => [c]),
        );
        assert.ok(receiver.received.every((r) => r.headers["x-a2a-notification-token"] === token));
        const last = receiver.received.at(-1)?.body.statusUpdate as
          | { status?: { state?: string } }
          | undefined;
        assert.equal(last?.status?.state, "TASK_STATE_COMPLETED");
        const { configs } = await store.tasks.listPushConfigs({ taskId: task.id });
        assert.equal(configs.length, 1);
        assert.equal(configs[0]?.url, receiver.url("/a2a-hook"));
      } finally {
        await replica.close();
        await receiver.close();
      }
    });

    it("push configs: save (assigning ids), load, loadWithMetadata and delete through TaskService", async () => {
      const taskId = `push-${randomUUID()}`;
      await store.tasks.saveTask({ task: { id: taskId, status: { state: TaskState.WORKING } } });
      const push = new AgentStorePushNotificationStore(store.tasks);
      const ctx = new ServerCallContext();
      const config = {
        tenant: "",
        id: "",
        taskId,
        url: "http://127.0.0.1:9/hook",
        token: "tok",
        authentication: { scheme: "Bearer", credentials: "secret" },
      };
      await push.save(taskId, ctx, config);
      assert.notEqual(config.id, "", "an id is assigned in place");
      await push.save(taskId, ctx, { ...config, id: "second", authentication: undefined });

      const loaded = await push.load(taskId, ctx);
      assert.deepEqual(loaded.map((c) => c.id).sort(), [config.id, "second"].sort());
      assert.deepEqual(
        loaded.find((c) => c.id === config.id),
        config,
      );
      const { config: viaService } = await store.tasks.getPushConfig({ taskId, id: "second" });
      assert.equal(viaService?.url, config.url);

      const withMeta = await push.loadWithMetadata(taskId, ctx);
      assert.equal(withMeta.length, 2);
      assert.ok(withMeta.every((entry) => entry.wireVersion === "1.0"));

      await push.delete(taskId, ctx, "second");
      await push.delete(taskId, ctx, "second"); // already gone: no error
      assert.deepEqual(
        (await push.load(taskId, ctx)).map((c) => c.id),
        [config.id],
      );
      await assert.rejects(store.tasks.getPushConfig({ taskId, id: "second" }), (err: unknown) => {
        return err instanceof ConnectError && err.code === Code.NotFound;
      });
      assert.deepEqual(await push.load("no-such-task", ctx), []);
    });
  });
}
