import { randomUUID } from "node:crypto";
import { type Client, createClient } from "@connectrpc/connect";
import { Role, TaskState } from "../../gen/agentstore/v1/a2a_task_pb.ts";
import { TaskService } from "../../gen/agentstore/v1/task_service_pb.ts";
import { Periodic } from "../core/periodic.ts";
import { SecretBox } from "../core/secrets.ts";
import { LogHub } from "../feed/stream-hub.ts";
import { WakeSignal } from "../feed/wake-signal.ts";
import { createTaskService } from "../services/task-service.ts";
import { ConversationStore } from "../store/a2a/conversations.ts";
import { a2aEntities } from "../store/a2a/entities.ts";
import { TASK_UPDATES_CHANNEL } from "../store/a2a/model.ts";
import { PushConfigStore } from "../store/a2a/push-configs.ts";
import { PushDeliveryStore } from "../store/a2a/push-deliveries.ts";
import { type TaskLogItem, TaskStore } from "../store/a2a/tasks.ts";
import type { Module } from "./module.ts";
import { PushDeliveryWorker } from "./push-delivery-worker.ts";

/** With push delivery on, each replica's sender looks for due deliveries at least this often. */
const PUSH_IDLE_LOOK_MS = 5_000;

/** With push delivery off, the history RPCs still read (and redrive) what earlier runs left. */
const DELIVERY_OFF = { maxAttempts: 1, backoffInitialMs: 1_000, backoffMaxMs: 1_000 };

/** Update-log entries a followed task keeps in memory for its live followers. */
const UPDATE_BUFFER = 256;
const UPDATE_BUFFER_BYTES = 4 * 1024 * 1024;

/**
 * TaskService: A2A tasks with their update logs (StreamTaskUpdates through a LogHub, as run
 * events), GetTask's long poll, conversations and push delivery. Each replica runs the sweeper
 * that deletes expired tasks, idle conversations and delivered pushes past their retention (reads
 * hide expired tasks and conversations from their expiry on), and, with push delivery on, the
 * push sender.
 */
export const tasksModule: Module = {
  name: "tasks",
  entities: a2aEntities,
  mount({ config, db, uow, feed, paging, logger }) {
    const settings = config.tasks;
    const delivery = settings.pushDelivery;
    const deliveries =
      delivery === null
        ? undefined
        : new PushDeliveryStore(db, uow, paging, {
            maxAttempts: delivery.maxAttempts,
            backoffInitialMs: delivery.backoffInitialMs,
            backoffMaxMs: delivery.backoffMaxMs,
          });
    const tasks = new TaskStore(db, uow, paging, {
      defaultTtlMs: settings.defaultTtlMs,
      maxTaskBytes: settings.maxTaskBytes,
      deliveries,
    });
    const conversations = new ConversationStore(db, uow, paging, {
      maxMessages: settings.conversationMaxMessages,
      ttlMs: settings.conversationTtlMs,
    });
    const pushConfigs = new PushConfigStore(db, uow, paging, new SecretBox(settings.pushConfigKeys), {
      allowPrivateUrls: settings.pushAllowPrivateUrls,
    });
    const pollMs = config.runs.stream.pollIntervalMs;
    const updateHub = new LogHub<TaskLogItem>(
      tasks.updateSource(),
      feed,
      {
        bufferEntries: UPDATE_BUFFER,
        bufferBytes: UPDATE_BUFFER_BYTES,
        pageSize: 500,
        pollIntervalMs: pollMs,
      },
      logger,
    );
    const taskChanged = new WakeSignal(feed, TASK_UPDATES_CHANNEL, pollMs);
    const sweeper = new Periodic(
      "a2a expiry sweep",
      async () => {
        await tasks.sweepExpired();
        await conversations.sweepExpired();
        const retention = delivery?.deliveredRetentionMs ?? null;
        if (retention !== null) await deliveries?.sweepDelivered(retention);
      },
      logger,
    );
    sweeper.start(settings.sweepMs);
    const sender =
      delivery === null || deliveries === undefined
        ? undefined
        : new PushDeliveryWorker(deliveries, pushConfigs, feed, logger, {
            concurrency: delivery.concurrency,
            timeoutMs: delivery.timeoutMs,
            allowPrivateUrls: settings.pushAllowPrivateUrls,
            idleLookMs: PUSH_IDLE_LOOK_MS,
          });
    sender?.start();
    return {
      services: [TaskService],
      routes: (router) =>
        router.service(
          TaskService,
          createTaskService({
            tasks,
            conversations,
            pushConfigs,
            pushDeliveries: deliveries ?? new PushDeliveryStore(db, uow, paging, DELIVERY_OFF),
            updateHub,
            taskChanged,
          }),
        ),
      hubs: new Map([["a2a-task-updates", updateHub as LogHub<unknown>]]),
      gauges: () => ({ "tasks.waiting": taskChanged.waiting(), "push.sending": sender?.sending() ?? 0 }),
      async close() {
        taskChanged.close();
        await sender?.stop();
        await sweeper.stop();
      },
      warmUp: (transport) => warmUpTaskUpdates(createClient(TaskService, transport)),
      warmUpRest: (transport) => warmUpTaskReads(createClient(TaskService, transport)),
    };
  },
};

const warmUpMessage = () => ({
  messageId: randomUUID(),
  role: Role.AGENT,
  parts: [{ content: { case: "text" as const, value: "w" } }],
});

/** An A2A server's task life: save, publish, read, stream, delete. */
async function warmUpTaskUpdates(client: Client<typeof TaskService>): Promise<void> {
  const id = `warmup-${randomUUID()}`;
  const message = warmUpMessage();
  try {
    await client.saveTask({ task: { id, contextId: id, status: { state: TaskState.SUBMITTED } } });
    await client.publishTaskUpdate({
      taskId: id,
      updates: [
        { update: { case: "message", value: message } },
        {
          update: { case: "artifactUpdate", value: { artifact: { artifactId: "a", parts: message.parts } } },
        },
        { update: { case: "statusUpdate", value: { status: { state: TaskState.COMPLETED } } } },
      ],
    });
    await client.getTask({ id, historyLength: 1 });
    // The task is terminal: the stream replays it and ends.
    for await (const _ of client.streamTaskUpdates({ taskId: id, afterSeq: 0n })) {
    }
  } finally {
    await client.deleteTask({ id }).catch(() => {});
  }
}

/** Lists, conversations and push configs. */
async function warmUpTaskReads(client: Client<typeof TaskService>): Promise<void> {
  const contextId = `warmup-${randomUUID()}`;
  try {
    await client.saveTask({ task: { id: contextId, contextId, status: { state: TaskState.SUBMITTED } } });
    // A documentation address (TEST-NET-1): public to the URL check, no lookup, never contacted.
    const { config } = await client.createPushConfig({
      config: {
        taskId: contextId,
        url: "https://192.0.2.1/warmup",
        token: "w",
        authentication: { scheme: "Bearer", credentials: "w" },
      },
    });
    await client.getPushConfig({ taskId: contextId, id: config?.id ?? "" });
    await client.listPushConfigs({ taskId: contextId, pageSize: 1 });
    await client.listPushDeliveries({ taskId: contextId, configId: config?.id ?? "", pageSize: 1 });
    await client.redrivePushDeliveries({ taskId: contextId, configId: config?.id ?? "" });
    await client.deletePushConfig({ taskId: contextId, id: config?.id ?? "" });
    await client.listTasks({ contextId, pageSize: 1 });
    await client.listRecentTasks({ limit: 1 });
    await client.appendMessage({ contextId, message: warmUpMessage() });
    await client.listMessages({ contextId, pageSize: 1 });
    await client.getConversation({ contextId });
    await client.getConversationStats({});
  } finally {
    await client.deleteConversation({ contextId }).catch(() => {});
    await client.deleteTask({ id: contextId }).catch(() => {});
  }
}
