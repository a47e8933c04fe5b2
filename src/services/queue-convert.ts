import { create, type JsonObject } from "@bufbuild/protobuf";
import { type Duration, durationFromMs, timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  type NewQueueTask,
  type QueueSchedule as QueueScheduleProto,
  QueueScheduleSchema,
  type QueueStats as QueueStatsProto,
  QueueStatsSchema,
  type QueueTaskAttempt,
  QueueTaskAttemptSchema,
  type QueueTask as QueueTaskProto,
  QueueTaskSchema,
  QueueTaskState,
} from "../../gen/agentstore/v1/queue_task_pb.ts";
import {
  type AttemptRef,
  DEFAULT_BACKOFF_INITIAL_MS,
  DEFAULT_BACKOFF_MAX_MS,
  DEFAULT_MAX_ATTEMPTS,
  type NewTask,
  QUEUE_TASK_STATES,
  type QueueStats,
  type QueueTask,
  type Schedule,
  type QueueTaskState as State,
} from "../store/queue/model.ts";
import { dateFromProto, emptyToNull } from "./run-convert.ts";
import { msFromDuration } from "./runner-convert.ts";

/** Proto ⇄ domain for QueueService. */

/** QueueTaskState values are 1 + the index of the domain state, in the same order. */
export function stateToProto(state: State): QueueTaskState {
  return (QUEUE_TASK_STATES.indexOf(state) + 1) as QueueTaskState;
}

export function stateFromProto(state: QueueTaskState): State | null {
  return state === QueueTaskState.UNSPECIFIED ? null : (QUEUE_TASK_STATES[state - 1] ?? null);
}

const ts = (date: Date | null) => (date === null ? undefined : timestampFromDate(date));
const optionalMs = (value: Duration | undefined) => (value === undefined ? null : msFromDuration(value, 0));

export function newTaskFromProto(task: NewQueueTask, queue = task.queue): NewTask {
  const backoffMax = msFromDuration(task.backoff?.maxDelay, DEFAULT_BACKOFF_MAX_MS);
  return {
    queue,
    lane: task.lane,
    priority: task.priority,
    payload: (task.payload ?? {}) as Record<string, unknown>,
    idempotencyKey: emptyToNull(task.idempotencyKey),
    replace: task.replace,
    runAt: dateFromProto(task.runTime) ?? null,
    maxAttempts: task.maxAttempts === 0 ? DEFAULT_MAX_ATTEMPTS : task.maxAttempts,
    backoff: {
      initialMs: Math.min(msFromDuration(task.backoff?.initialDelay, DEFAULT_BACKOFF_INITIAL_MS), backoffMax),
      maxMs: backoffMax,
    },
    timeoutMs: optionalMs(task.timeout),
    serial: task.serial,
    scheduleId: null,
  };
}

export function attemptFromProto(attempt: QueueTaskAttempt): AttemptRef {
  return {
    attemptId: emptyToNull(attempt.attemptId),
    runId: emptyToNull(attempt.runId),
    sessionId: emptyToNull(attempt.sessionId),
    metadata: (attempt.metadata ?? {}) as Record<string, unknown>,
  };
}

export function taskToProto(task: QueueTask): QueueTaskProto {
  return create(QueueTaskSchema, {
    taskId: task.id,
    queue: task.queue,
    lane: task.lane,
    priority: task.priority,
    payload: task.payload as JsonObject,
    idempotencyKey: task.idempotencyKey ?? "",
    state: stateToProto(task.state),
    serial: task.serial,
    runTime: timestampFromDate(task.runAt),
    attempts: task.attempts,
    maxAttempts: task.maxAttempts,
    backoff: {
      initialDelay: durationFromMs(task.backoff.initialMs),
      maxDelay: durationFromMs(task.backoff.maxMs),
    },
    timeout: task.timeoutMs === null ? undefined : durationFromMs(task.timeoutMs),
    workerId: task.workerId ?? "",
    leaseExpireTime: ts(task.leaseExpiresAt),
    lastError: task.lastError ?? "",
    result: (task.result ?? undefined) as JsonObject | undefined,
    latestAttempt:
      task.latestAttempt === null
        ? undefined
        : create(QueueTaskAttemptSchema, {
            attemptId: task.latestAttempt.attemptId ?? "",
            runId: task.latestAttempt.runId ?? "",
            sessionId: task.latestAttempt.sessionId ?? "",
            metadata: task.latestAttempt.metadata as JsonObject,
          }),
    sessionPath: task.sessionPath ?? "",
    cancelReason: task.cancelReason ?? "",
    scheduleId: task.scheduleId ?? "",
    version: BigInt(task.version),
    readVersion: BigInt(task.readVersion),
    createTime: timestampFromDate(task.createdAt),
    updateTime: timestampFromDate(task.updatedAt),
    finishTime: ts(task.finishedAt),
  });
}

export function statsToProto(stats: QueueStats): QueueStatsProto {
  return create(QueueStatsSchema, {
    queue: stats.queue ?? "",
    total: BigInt(stats.total),
    byState: Object.fromEntries(Object.entries(stats.byState).map(([k, v]) => [k, BigInt(v)])),
    byLane: Object.fromEntries(Object.entries(stats.byLane).map(([k, v]) => [k, BigInt(v)])),
    due: BigInt(stats.due),
    oldestDueAge:
      stats.oldestDueAgeMs === null ? undefined : durationFromMs(Math.max(0, stats.oldestDueAgeMs)),
    maxVersion: BigInt(stats.maxVersion),
    generateTime: timestampFromDate(stats.generatedAt),
  });
}

export function scheduleToProto(schedule: Schedule): QueueScheduleProto {
  const t = schedule.template;
  return create(QueueScheduleSchema, {
    scheduleId: schedule.id,
    queue: schedule.queue,
    cron: schedule.cron,
    timeZone: schedule.timeZone,
    template: {
      queue: schedule.queue,
      lane: t.lane,
      priority: t.priority,
      payload: t.payload as JsonObject,
      maxAttempts: t.maxAttempts,
      backoff: {
        initialDelay: durationFromMs(t.backoff.initialMs),
        maxDelay: durationFromMs(t.backoff.maxMs),
      },
      timeout: t.timeoutMs === null ? undefined : durationFromMs(t.timeoutMs),
      serial: t.serial,
    },
    nextRunTime: timestampFromDate(schedule.nextRunAt),
    lastRunTime: ts(schedule.lastRunAt),
    createTime: timestampFromDate(schedule.createdAt),
  });
}
