import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  CancelQueueTaskResponseSchema,
  ClaimTasksResponseSchema,
  CompleteTaskResponseSchema,
  CompleteTasksResponseSchema,
  CreateScheduleResponseSchema,
  DeleteScheduleResponseSchema,
  EnqueueTaskResponseSchema,
  EnqueueTasksResponseSchema,
  FailTaskResponseSchema,
  GetQueueSnapshotResponseSchema,
  GetQueueStatsResponseSchema,
  GetQueueTaskResponseSchema,
  ListDeadTasksResponseSchema,
  ListQueueTasksResponseSchema,
  ListSchedulesResponseSchema,
  MarkTaskReadResponseSchema,
  type QueueService,
  RedriveTasksResponseSchema,
  RenewTaskLeaseResponseSchema,
  UpdateTaskAttemptResponseSchema,
  WatchTasksResponseSchema,
} from "../../gen/agentstore/v1/queue_service_pb.ts";
import { type NewQueueTask, NewQueueTaskSchema } from "../../gen/agentstore/v1/queue_task_pb.ts";
import { invalidArgument } from "../core/errors.ts";
import type { VersionHub } from "../feed/stream-hub.ts";
import { tenantOf } from "../server/auth.ts";
import { DEFAULT_LEASE_MS, QUEUE_STREAM, type QueueTask } from "../store/queue/model.ts";
import type { ScheduleStore } from "../store/queue/schedules.ts";
import type { QueueStore } from "../store/queue/tasks.ts";
import {
  attemptFromProto,
  newTaskFromProto,
  scheduleToProto,
  stateFromProto,
  statsToProto,
  taskToProto,
} from "./queue-convert.ts";
import { emptyToNull, positionFromProto, watchStart } from "./run-convert.ts";
import { msFromDuration } from "./runner-convert.ts";

export interface QueueServiceDeps {
  queue: QueueStore;
  schedules: ScheduleStore;
  taskHub: VersionHub<QueueTask>;
}

/** GetQueueSnapshot's "top tasks". */
const SNAPSHOT_TOP = 20;

/**
 * An enqueue's task needs a queue. (Its other fields are bounded by protovalidate; the queue is
 * required here rather than in the proto because a schedule's template leaves it empty.)
 */
function requireQueue(task: NewQueueTask, field: string): void {
  if (task.queue === "")
    throw invalidArgument("INVALID_ARGUMENT", `${field}.queue is required`, { field: `${field}.queue` });
}

/** QueueService: map -> store -> map; the tenant from the caller's credentials. */
export function createQueueService(deps: QueueServiceDeps): ServiceImpl<typeof QueueService> {
  const { queue, schedules, taskHub } = deps;
  return {
    async enqueueTask(req, ctx) {
      const task = req.task;
      if (task === undefined)
        throw invalidArgument("INVALID_ARGUMENT", "task is required", { field: "task" });
      requireQueue(task, "task");
      const [result] = await queue.enqueue(tenantOf(ctx), [newTaskFromProto(task)]);
      if (result === undefined) throw new Error("an enqueue returned nothing");
      return create(EnqueueTaskResponseSchema, { task: taskToProto(result.task), created: result.created });
    },

    async enqueueTasks(req, ctx) {
      for (const [i, task] of req.tasks.entries()) requireQueue(task, `tasks[${i}]`);
      const results = await queue.enqueue(
        tenantOf(ctx),
        req.tasks.map((task) => newTaskFromProto(task)),
      );
      return create(EnqueueTasksResponseSchema, {
        tasks: results.map((r) => taskToProto(r.task)),
        created: results.map((r) => r.created),
      });
    },

    async getQueueTask(req, ctx) {
      const task = await queue.get(tenantOf(ctx), req.taskId, emptyToNull(req.readerId));
      return create(GetQueueTaskResponseSchema, { task: taskToProto(task) });
    },

    async listQueueTasks(req, ctx) {
      const page = await queue.list(
        tenantOf(ctx),
        {
          queue: emptyToNull(req.queue),
          state: stateFromProto(req.state),
          lane: emptyToNull(req.lane),
          updatedAfterVersion: positionFromProto(req.updatedAfterVersion),
          readerId: emptyToNull(req.readerId),
        },
        req,
      );
      return create(ListQueueTasksResponseSchema, {
        tasks: page.items.map(taskToProto),
        nextPageToken: page.nextPageToken,
      });
    },

    async claimTasks(req, ctx) {
      const tenant = tenantOf(ctx);
      const request = {
        workerId: req.workerId,
        queue: req.queue,
        lanes: req.lanes.length === 0 ? null : req.lanes,
        maxTasks: req.maxTasks === 0 ? 1 : req.maxTasks,
        leaseMs: msFromDuration(req.lease, DEFAULT_LEASE_MS),
      };
      const waitMs = msFromDuration(req.wait, 0);
      const tasks =
        waitMs > 0
          ? await queue.claimWaiting(tenant, request, waitMs, ctx.signal)
          : (await queue.claim(tenant, request)).tasks;
      return create(ClaimTasksResponseSchema, { tasks: tasks.map(taskToProto) });
    },

    async renewTaskLease(req, ctx) {
      const task = await queue.renew(
        tenantOf(ctx),
        req.taskId,
        req.workerId,
        msFromDuration(req.lease, DEFAULT_LEASE_MS),
      );
      return create(RenewTaskLeaseResponseSchema, { task: taskToProto(task) });
    },

    async completeTask(req, ctx) {
      const [ended] = await queue.complete(tenantOf(ctx), req.workerId, [
        { taskId: req.taskId, result: (req.result ?? {}) as Record<string, unknown> },
      ]);
      if (ended === undefined) throw new Error("a completion returned nothing");
      return create(CompleteTaskResponseSchema, { task: taskToProto(ended.task), changed: ended.changed });
    },

    async completeTasks(req, ctx) {
      const ids = new Set(req.completions.map((c) => c.taskId));
      if (ids.size !== req.completions.length) {
        throw invalidArgument("INVALID_ARGUMENT", "completions name a task more than once", {
          field: "completions",
        });
      }
      const ended = await queue.complete(
        tenantOf(ctx),
        req.workerId,
        req.completions.map((c) => ({
          taskId: c.taskId,
          result: (c.result ?? {}) as Record<string, unknown>,
        })),
      );
      return create(CompleteTasksResponseSchema, {
        tasks: ended.map((e) => taskToProto(e.task)),
        changed: ended.map((e) => e.changed),
      });
    },

    async failTask(req, ctx) {
      const ended = await queue.fail(tenantOf(ctx), req.taskId, req.workerId, {
        error: req.error,
        noRetry: req.noRetry,
        retryDelayMs: req.retryDelay === undefined ? null : msFromDuration(req.retryDelay, 0),
      });
      return create(FailTaskResponseSchema, { task: taskToProto(ended.task), changed: ended.changed });
    },

    async listDeadTasks(req, ctx) {
      const page = await queue.listDead(tenantOf(ctx), emptyToNull(req.queue), req);
      return create(ListDeadTasksResponseSchema, {
        tasks: page.items.map(taskToProto),
        nextPageToken: page.nextPageToken,
      });
    },

    async redriveTasks(req, ctx) {
      const queueName = emptyToNull(req.queue);
      if (req.taskIds.length === 0 && queueName === null) {
        throw invalidArgument(
          "INVALID_ARGUMENT",
          "name the task_ids to redrive, or a queue to redrive its DEAD tasks",
          {
            field: "queue",
          },
        );
      }
      const count = await queue.redrive(
        tenantOf(ctx),
        req.taskIds.length === 0 ? null : req.taskIds,
        queueName,
      );
      return create(RedriveTasksResponseSchema, { redrivenCount: BigInt(count) });
    },

    async updateTaskAttempt(req, ctx) {
      const workerId = emptyToNull(req.workerId);
      const state = stateFromProto(req.state);
      if (state === "running" && workerId === null) {
        throw invalidArgument(
          "INVALID_ARGUMENT",
          "only the worker holding a task can make it RUNNING: set worker_id",
          {
            field: "worker_id",
          },
        );
      }
      const task = await queue.updateAttempt(tenantOf(ctx), req.taskId, {
        workerId,
        state,
        latestAttempt: req.latestAttempt === undefined ? null : attemptFromProto(req.latestAttempt),
        sessionPath: emptyToNull(req.sessionPath),
      });
      return create(UpdateTaskAttemptResponseSchema, { task: taskToProto(task) });
    },

    async cancelQueueTask(req, ctx) {
      const ended = await queue.cancel(tenantOf(ctx), req.taskId, req.reason || "cancel requested");
      return create(CancelQueueTaskResponseSchema, { task: taskToProto(ended.task), changed: ended.changed });
    },

    async markTaskRead(req, ctx) {
      const cursor = await queue.markRead(tenantOf(ctx), req.taskId, req.readerId);
      return create(MarkTaskReadResponseSchema, {
        cursor: {
          taskId: cursor.taskId,
          readerId: cursor.readerId,
          taskVersion: BigInt(cursor.version),
          readTime: timestampFromDate(cursor.readAt),
        },
      });
    },

    async getQueueStats(req, ctx) {
      const { stats } = await queue.snapshot(tenantOf(ctx), emptyToNull(req.queue), 0);
      return create(GetQueueStatsResponseSchema, { stats: statsToProto(stats) });
    },

    async getQueueSnapshot(req, ctx) {
      const { stats, top } = await queue.snapshot(tenantOf(ctx), emptyToNull(req.queue), SNAPSHOT_TOP);
      return create(GetQueueSnapshotResponseSchema, {
        stats: statsToProto(stats),
        topTasks: top.map(taskToProto),
      });
    },

    async createSchedule(req, ctx) {
      const schedule = req.schedule;
      if (schedule === undefined) {
        throw invalidArgument("INVALID_ARGUMENT", "schedule is required", { field: "schedule" });
      }
      const template = schedule.template;
      const created = await schedules.create(tenantOf(ctx), {
        id: emptyToNull(schedule.scheduleId),
        queue: schedule.queue,
        cron: schedule.cron,
        timeZone: schedule.timeZone,
        template: newTaskFromProto(template ?? create(NewQueueTaskSchema), schedule.queue),
      });
      return create(CreateScheduleResponseSchema, { schedule: scheduleToProto(created) });
    },

    async listSchedules(req, ctx) {
      const page = await schedules.list(tenantOf(ctx), emptyToNull(req.queue), req);
      return create(ListSchedulesResponseSchema, {
        schedules: page.items.map(scheduleToProto),
        nextPageToken: page.nextPageToken,
      });
    },

    async deleteSchedule(req, ctx) {
      await schedules.delete(tenantOf(ctx), req.scheduleId, req.allowMissing);
      return create(DeleteScheduleResponseSchema, {});
    },

    async *watchTasks(req, ctx) {
      const tenant = tenantOf(ctx);
      const start = await watchStart(req, () => queue.watchHead(tenant));
      const only = emptyToNull(req.queue);
      for await (const entry of taskHub.follow(tenant, QUEUE_STREAM, start, ctx.signal)) {
        if (only !== null && entry.value.queue !== only) continue;
        yield create(WatchTasksResponseSchema, {
          task: taskToProto(entry.value),
          version: BigInt(entry.seq),
        });
      }
    },
  };
}
