import { defineEntity, type InferEntity, p } from "@mikro-orm/core";
import { QUEUE_TASK_STATES } from "./model.ts";

const quoted = (values: readonly string[]) => values.map((v) => `'${v}'`).join(",");

/**
 * Queue tasks of a tenant. A task is PENDING until a worker claims it (CLAIMED, then perhaps
 * RUNNING, with worker_id and lease_expires_at set) and ends COMPLETED, FAILED, BLOCKED, CANCELLED
 * or DEAD. `version` is the tenant's "queue" version of its last change (db/unit-of-work.ts).
 */
export const QueueTaskEntity = defineEntity({
  name: "QueueTask",
  tableName: "queue_tasks",
  properties: {
    tenantId: p.text().primary(),
    id: p.uuid().primary(),
    queue: p.text(),
    lane: p.text().default(""),
    priority: p.integer().default(0),
    payload: p.json<Record<string, unknown>>(),
    idempotencyKey: p.text().nullable(),
    payloadHash: p.text().nullable(),
    state: p.text().check(`state in (${quoted(QUEUE_TASK_STATES)})`),
    serial: p.boolean().default(false),
    runAt: p.datetime(3).defaultRaw("current_timestamp(3)"),
    attempts: p.integer().default(0),
    maxAttempts: p.integer(),
    backoffInitialMs: p.integer(),
    backoffMaxMs: p.integer(),
    timeoutMs: p.integer().nullable(),
    workerId: p.text().nullable(),
    leaseExpiresAt: p.datetime(3).nullable(),
    /** When the current attempt times out (claim time + timeout); leases never reach past it. */
    attemptDeadline: p.datetime(3).nullable(),
    lastError: p.text().nullable(),
    result: p.json<Record<string, unknown>>().nullable(),
    latestAttempt: p.json<Record<string, unknown>>().nullable(),
    sessionPath: p.text().nullable(),
    cancelReason: p.text().nullable(),
    scheduleId: p.text().nullable(),
    version: p.bigint("number"),
    createdAt: p.datetime(3).defaultRaw("current_timestamp(3)"),
    updatedAt: p.datetime(3).defaultRaw("current_timestamp(3)"),
    finishedAt: p.datetime(3).nullable(),
  },
  indexes: [
    {
      // Partial, so that no query but an enqueue's ON CONFLICT can pick it: a claim that scanned a
      // queue through it would read every finished task of the queue instead of the pending ones.
      name: "queue_tasks_idempotency_unique",
      expression:
        "create unique index queue_tasks_idempotency_unique on queue_tasks (tenant_id, queue, idempotency_key) where idempotency_key is not null",
    },
    { name: "queue_tasks_version_idx", properties: ["tenantId", "version"] },
    {
      // ClaimTasks: a queue's pending tasks in claim order.
      name: "queue_tasks_claim_idx",
      expression:
        "create index queue_tasks_claim_idx on queue_tasks (tenant_id, queue, priority desc, run_at, id) where state = 'pending'",
    },
    {
      // The sweeper: held tasks by lease expiry, across tenants.
      name: "queue_tasks_lease_idx",
      expression:
        "create index queue_tasks_lease_idx on queue_tasks (lease_expires_at) where state in ('claimed','running')",
    },
    {
      name: "queue_tasks_dead_idx",
      expression:
        "create index queue_tasks_dead_idx on queue_tasks (tenant_id, queue, finished_at, id) where state = 'dead'",
    },
  ],
});
export type QueueTaskRow = InferEntity<typeof QueueTaskEntity>;

/**
 * One row per serial lane, locked (FOR UPDATE SKIP LOCKED) by the claim that takes the lane's
 * task: two claims that race for the same lane never both see it free.
 */
export const QueueLaneEntity = defineEntity({
  name: "QueueLane",
  tableName: "queue_lanes",
  properties: {
    tenantId: p.text().primary(),
    queue: p.text().primary(),
    lane: p.text().primary(),
    /** The task of the lane that is held right now; set by its claim, cleared when it stops being held. */
    heldTaskId: p.uuid().nullable(),
  },
});

/** What each reader last saw of a task. */
export const QueueReadCursorEntity = defineEntity({
  name: "QueueReadCursor",
  tableName: "queue_read_cursors",
  properties: {
    tenantId: p.text().primary(),
    taskId: p.uuid().primary(),
    readerId: p.text().primary(),
    version: p.bigint("number"),
    readAt: p.datetime(3).defaultRaw("current_timestamp(3)"),
  },
});
export type QueueReadCursorRow = InferEntity<typeof QueueReadCursorEntity>;

/** Recurring work: a task template enqueued at each tick of a cron expression. */
export const QueueScheduleEntity = defineEntity({
  name: "QueueSchedule",
  tableName: "queue_schedules",
  properties: {
    tenantId: p.text().primary(),
    id: p.text().primary(),
    queue: p.text(),
    cron: p.text(),
    timeZone: p.text().default(""),
    template: p.json<Record<string, unknown>>(),
    nextRunAt: p.datetime(3),
    lastRunAt: p.datetime(3).nullable(),
    createdAt: p.datetime(3).defaultRaw("current_timestamp(3)"),
  },
  indexes: [
    {
      name: "queue_schedules_due_idx",
      properties: ["nextRunAt"],
    },
  ],
});
export type QueueScheduleRow = InferEntity<typeof QueueScheduleEntity>;

export const queueEntities = [QueueTaskEntity, QueueLaneEntity, QueueReadCursorEntity, QueueScheduleEntity];
