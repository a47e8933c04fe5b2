import { create } from "@bufbuild/protobuf";
import { type Duration, durationFromMs, timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import { ConversationStatsSchema, type Task, TaskState } from "../../gen/agentstore/v1/a2a_task_pb.ts";
import {
  AppendMessageResponseSchema,
  CreatePushConfigResponseSchema,
  DeleteConversationResponseSchema,
  DeletePushConfigResponseSchema,
  DeleteTaskResponseSchema,
  GetConversationResponseSchema,
  GetConversationStatsResponseSchema,
  GetPushConfigResponseSchema,
  GetTaskResponseSchema,
  ListMessagesResponseSchema,
  ListPushConfigsResponseSchema,
  ListPushDeliveriesResponseSchema,
  ListRecentTasksResponseSchema,
  ListTasksResponseSchema,
  PublishTaskUpdateResponseSchema,
  RedrivePushDeliveriesResponseSchema,
  SaveTaskResponseSchema,
  type StreamTaskUpdatesResponse,
  StreamTaskUpdatesResponseSchema,
  type TaskService,
} from "../../gen/agentstore/v1/task_service_pb.ts";
import { DomainError, invalidArgument } from "../core/errors.ts";
import { clampPageSize } from "../core/paging.ts";
import type { LogHub } from "../feed/stream-hub.ts";
import type { WakeSignal } from "../feed/wake-signal.ts";
import { tenantOf } from "../server/auth.ts";
import type { ConversationStore } from "../store/a2a/conversations.ts";
import { a2aTaskNotFound, isTerminal, type TaskUpdateCase, withHistory } from "../store/a2a/model.ts";
import type { PushConfigStore } from "../store/a2a/push-configs.ts";
import type { PushDeliveryStore } from "../store/a2a/push-deliveries.ts";
import type { TaskLogItem, TaskStore } from "../store/a2a/tasks.ts";
import { msFromDuration } from "./runner-convert.ts";

export interface TaskServiceDeps {
  tasks: TaskStore;
  conversations: ConversationStore;
  pushConfigs: PushConfigStore;
  pushDeliveries: PushDeliveryStore;
  updateHub: LogHub<TaskLogItem>;
  /** Wakes GetTask long polls when their task changes. */
  taskChanged: WakeSignal;
}

const DEFAULT_LONG_POLL_MS = 30_000;
const DEFAULT_RECENT = 20;
/** Rows per read when a terminal task's log is replayed without the hub. */
const REPLAY_PAGE = 500;

const MAX_TIMER_MS = 24 * 3600 * 1000;

/** A TTL of the request: unset keeps the task's, zero removes it, anything else is at least 1 ms. */
function ttlOf(ttl: Duration | undefined): number | null | undefined {
  if (ttl === undefined) return undefined;
  if (ttl.seconds === 0n && ttl.nanos === 0) return null;
  return Math.max(1, Math.ceil(Number(ttl.seconds) * 1000 + ttl.nanos / 1e6));
}

const withoutArtifacts = (task: Task): Task => ({ ...task, artifacts: [] });

/** A log entry as sent: a snapshot entry's history cut to the caller's history_length. */
function trimmed(
  entry: StreamTaskUpdatesResponse,
  historyLength: number | undefined,
): StreamTaskUpdatesResponse {
  if (entry.update.case !== "task" || historyLength === undefined) return entry;
  return { ...entry, update: { case: "task", value: withHistory(entry.update.value, historyLength) } };
}

/**
 * A signal that aborts with NOT_FOUND when the task expires (or with the call's own reason): an
 * expired task leaves its streams at once, not at the next sweep or poll. Each write moves the
 * expiry, so at the old expiry the task is read again and the timer set to the new one.
 */
function watchExpiry(tasks: TaskStore, tenant: string, task: Task, callSignal: AbortSignal) {
  const controller = new AbortController();
  const onCallAbort = () => controller.abort(callSignal.reason);
  callSignal.addEventListener("abort", onCallAbort, { once: true });
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  const arm = (expireTime: Task["expireTime"]) => {
    if (expireTime === undefined || stopped || controller.signal.aborted) return;
    const ms = Math.max(0, timestampDate(expireTime).getTime() - Date.now()) + 1;
    // setTimeout fires at once beyond 2^31-1 ms (TTLs may be a year): wake at most daily, look again.
    timer = setTimeout(
      () => {
        tasks.get(tenant, task.id).then(
          (current) => arm(current.expireTime),
          (err: unknown) => controller.abort(err),
        );
      },
      Math.min(ms, MAX_TIMER_MS),
    );
  };
  arm(task.expireTime);
  return {
    signal: controller.signal,
    stop() {
      stopped = true;
      clearTimeout(timer);
      callSignal.removeEventListener("abort", onCallAbort);
    },
  };
}

export function createTaskService(deps: TaskServiceDeps): ServiceImpl<typeof TaskService> {
  const { tasks, conversations, pushConfigs, pushDeliveries, updateHub, taskChanged } = deps;
  return {
    async saveTask(req, ctx) {
      const tenant = tenantOf(ctx);
      const task = req.task as Task;
      const foreign = req.pushConfigs.findIndex((config) => config.taskId !== task.id);
      if (foreign >= 0) {
        throw invalidArgument("INVALID_ARGUMENT", "push_configs: a config's task_id must be the task's id", {
          field: `push_configs[${foreign}].task_id`,
        });
      }
      const prepared = await Promise.all(
        req.pushConfigs.map((config) => pushConfigs.prepare(tenant, config)),
      );
      const saved = await tasks.save(
        tenant,
        task,
        req.expectedGeneration,
        ttlOf(req.ttl),
        prepared.length === 0
          ? undefined
          : async (tx) => {
              for (const config of prepared) await pushConfigs.insertPrepared(tx, config);
            },
      );
      return create(SaveTaskResponseSchema, {
        ...saved,
        pushConfigs: prepared.map((config) => pushConfigs.preparedToProto(config)),
      });
    },

    async getTask(req, ctx) {
      const tenant = tenantOf(ctx);
      let task = await tasks.get(tenant, req.id);
      const after = req.waitForGenerationAfter;
      // A terminal task changes no more (but for a same-state save): no point in waiting.
      const waits = after !== undefined && !isTerminal(task.status?.state ?? TaskState.UNSPECIFIED);
      if (after !== undefined && waits && task.generation <= after) {
        const deadline = Date.now() + msFromDuration(req.timeout, DEFAULT_LONG_POLL_MS);
        for (;;) {
          // Armed before the read: a write between the read and the wait still wakes it.
          const waiter = taskChanged.arm(tenant, req.id);
          try {
            task = await tasks.get(tenant, req.id);
            const left = deadline - Date.now();
            if (task.generation > after || left <= 0) break;
            await waiter.wait(left, ctx.signal);
          } finally {
            waiter.disarm();
          }
        }
      }
      return create(GetTaskResponseSchema, { task: withHistory(task, req.historyLength) });
    },

    async deleteTask(req, ctx) {
      await tasks.delete(tenantOf(ctx), req.id);
      return create(DeleteTaskResponseSchema);
    },

    async listTasks(req, ctx) {
      const page = await tasks.list(
        tenantOf(ctx),
        {
          contextId: req.contextId === "" ? null : req.contextId,
          state: req.status === TaskState.UNSPECIFIED ? null : req.status,
          statusTimestampAfter:
            req.statusTimestampAfter === undefined ? null : timestampDate(req.statusTimestampAfter),
        },
        { pageSize: req.pageSize, pageToken: req.pageToken },
      );
      return create(ListTasksResponseSchema, {
        tasks: page.items.map((task) => {
          const shown = withHistory(task, req.historyLength);
          return req.includeArtifacts ? shown : withoutArtifacts(shown);
        }),
        nextPageToken: page.nextPageToken,
        pageSize: clampPageSize(req.pageSize, 50, 100),
        totalSize: page.total,
      });
    },

    async listRecentTasks(req, ctx) {
      const recent = await tasks.listRecent(tenantOf(ctx), req.limit === 0 ? DEFAULT_RECENT : req.limit);
      return create(ListRecentTasksResponseSchema, {
        tasks: recent.map((task) => withoutArtifacts(withHistory(task, 0))),
      });
    },

    async publishTaskUpdate(req, ctx) {
      const updates = req.updates.map((u) => u.update as TaskUpdateCase);
      const result = await tasks.publish(
        tenantOf(ctx),
        req.taskId,
        updates,
        req.expectedGeneration,
        req.requestId === "" ? null : req.requestId,
      );
      return create(PublishTaskUpdateResponseSchema, {
        task: result.task,
        firstSeq: BigInt(result.firstSeq),
        lastSeq: BigInt(result.lastSeq),
        published: result.published,
      });
    },

    async *streamTaskUpdates(req, ctx) {
      const tenant = tenantOf(ctx);
      const task = await tasks.get(tenant, req.taskId);
      const last = Number(task.updateSeq);
      if (req.afterSeq !== undefined && req.afterSeq > task.updateSeq) {
        throw new DomainError(
          "OUT_OF_RANGE",
          "SEQ_OUT_OF_RANGE",
          `after_seq ${req.afterSeq} is beyond the task's last seq ${last}`,
          { task_id: task.id, last_seq: String(last) },
        );
      }
      const terminal = isTerminal(task.status?.state ?? TaskState.UNSPECIFIED);
      let cursor: number;
      if (req.afterSeq === undefined) {
        yield create(StreamTaskUpdatesResponseSchema, {
          seq: task.updateSeq,
          generation: task.generation,
          update: { case: "task", value: withHistory(task, req.historyLength) },
        });
        if (terminal) return;
        cursor = last;
      } else {
        cursor = Number(req.afterSeq);
      }
      if (terminal) {
        // Nothing more will come: replay what is stored up to the seq read, without the hub.
        const source = tasks.updateSource();
        while (cursor < last) {
          const read = await source.read(tenant, task.id, cursor, REPLAY_PAGE);
          for (const entry of read.entries) {
            if (entry.value.gone) throw a2aTaskNotFound(task.id);
            if (entry.seq > last) return;
            yield trimmed(entry.value.entry, req.historyLength);
            cursor = entry.seq;
          }
          if (read.entries.length === 0) return;
        }
        return;
      }
      const expiry = watchExpiry(tasks, tenant, task, ctx.signal);
      try {
        for await (const entry of updateHub.follow(tenant, task.id, cursor, expiry.signal)) {
          if (entry.value.gone) throw a2aTaskNotFound(task.id);
          yield trimmed(entry.value.entry, req.historyLength);
        }
      } finally {
        expiry.stop();
      }
    },

    async appendMessage(req, ctx) {
      const message = req.message;
      if (message === undefined) throw new Error("message is required (protovalidate)");
      const { created, count } = await conversations.append(tenantOf(ctx), req.contextId, message);
      return create(AppendMessageResponseSchema, { created, messageCount: BigInt(count) });
    },

    async listMessages(req, ctx) {
      const page = await conversations.list(tenantOf(ctx), req.contextId, {
        pageSize: req.pageSize,
        pageToken: req.pageToken,
      });
      return create(ListMessagesResponseSchema, { messages: page.items, nextPageToken: page.nextPageToken });
    },

    async getConversation(req, ctx) {
      const conversation = await conversations.get(tenantOf(ctx), req.contextId);
      return create(GetConversationResponseSchema, { conversation });
    },

    async deleteConversation(req, ctx) {
      await conversations.delete(tenantOf(ctx), req.contextId);
      return create(DeleteConversationResponseSchema);
    },

    async getConversationStats(_req, ctx) {
      const counts = await conversations.stats(tenantOf(ctx));
      const { maxMessages, ttlMs } = conversations.options;
      return create(GetConversationStatsResponseSchema, {
        stats: create(ConversationStatsSchema, {
          totalConversations: BigInt(counts.conversations),
          totalMessages: BigInt(counts.messages),
          oldestAccessTime: counts.oldestAccess === null ? undefined : timestampFromDate(counts.oldestAccess),
          newestAccessTime: counts.newestAccess === null ? undefined : timestampFromDate(counts.newestAccess),
          maxHistoryLength: maxMessages ?? 0,
          idleTtl: ttlMs === null ? undefined : durationFromMs(ttlMs),
          generateTime: timestampFromDate(new Date()),
        }),
      });
    },

    async createPushConfig(req, ctx) {
      // Validation requires the config; the check keeps the type narrow.
      if (req.config === undefined)
        throw new DomainError("INVALID_ARGUMENT", "INVALID_ARGUMENT", "config is required");
      const config = await pushConfigs.create(tenantOf(ctx), req.config);
      return create(CreatePushConfigResponseSchema, { config });
    },

    async getPushConfig(req, ctx) {
      const config = await pushConfigs.get(tenantOf(ctx), req.taskId, req.id);
      return create(GetPushConfigResponseSchema, { config });
    },

    async listPushConfigs(req, ctx) {
      const page = await pushConfigs.list(tenantOf(ctx), req.taskId, {
        pageSize: req.pageSize,
        pageToken: req.pageToken,
      });
      return create(ListPushConfigsResponseSchema, {
        configs: page.items,
        nextPageToken: page.nextPageToken,
      });
    },

    async deletePushConfig(req, ctx) {
      await pushConfigs.delete(tenantOf(ctx), req.taskId, req.id);
      return create(DeletePushConfigResponseSchema);
    },

    async listPushDeliveries(req, ctx) {
      const page = await pushDeliveries.list(tenantOf(ctx), req.taskId, req.configId, req.state, {
        pageSize: req.pageSize,
        pageToken: req.pageToken,
      });
      return create(ListPushDeliveriesResponseSchema, {
        deliveries: page.items,
        nextPageToken: page.nextPageToken,
      });
    },

    async redrivePushDeliveries(req, ctx) {
      const deliveries = await pushDeliveries.redrive(
        tenantOf(ctx),
        req.taskId,
        req.configId,
        req.deliveryIds,
      );
      return create(RedrivePushDeliveriesResponseSchema, { deliveries });
    },
  };
}
