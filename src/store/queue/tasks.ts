import { v7 as uuidv7 } from "uuid";
import { stableHash } from "../../core/hash.ts";
import { jsonWithinLimit } from "../../core/limits.ts";
import { isStringTuple, type ListSpec, type Page, type PageRequest, type Paging } from "../../core/paging.ts";
import type { Database } from "../../db/database.ts";
import type { Tx, UnitOfWork } from "../../db/unit-of-work.ts";
import type { WakeSignal } from "../../feed/wake-signal.ts";
import { QueueReadCursorEntity, QueueTaskEntity, type QueueTaskRow } from "./entities.ts";
import {
  type AttemptRef,
  type ClaimRequest,
  type Ended,
  idempotencyKeyReused,
  isHeld,
  isTerminal,
  MAX_ERROR_CHARS,
  type NewTask,
  notTaskHolder,
  QUEUE_DUE_CHANNEL,
  QUEUE_STREAM,
  type QueueStats,
  type QueueTask,
  type QueueTaskState,
  type TaskListFilter,
  taskNotFound,
  taskNotPending,
  taskTerminal,
  taskTimedOut,
} from "./model.ts";
import {
  cancelTask,
  claimTasks,
  completeTasks,
  ensureLanes,
  expireTasks,
  failTask,
  insertTasks,
  lockDead,
  lockExpired,
  markRead,
  probeDue,
  queueSnapshot,
  redriveTasks,
  renewTask,
  replaceTask,
  returnTasks,
  tasksByKeys,
  tasksStreamHead,
  tenantsWithExpiredLeases,
  updateAttempt,
} from "./sql.ts";

/** By version: the order of ListQueueTasks (incremental sync). */
const TASK_LIST: ListSpec<string[]> = {
  name: "queue_tasks",
  defaultSize: 50,
  maxSize: 500,
  isPosition: isStringTuple(1),
};
/** Oldest death first, by (finished_at, id). */
const DEAD_LIST: ListSpec<string[]> = {
  name: "queue_dead_tasks",
  defaultSize: 50,
  maxSize: 500,
  isPosition: isStringTuple(2),
};

/** Most DEAD tasks one RedriveTasks call without ids makes PENDING. */
const REDRIVE_BATCH = 1000;
/** Most expired tasks the sweeper gives back per tenant and transaction. */
const SWEEP_BATCH = 500;
/** Most tenants one sweep visits. */
const SWEEP_TENANTS = 100;

/**
 * The queue aggregate: tasks, their claims and leases, retries, dead tasks and read cursors. Every
 * change of a task takes the tenant's next "queue_tasks" version under the version row's lock
 * (db/unit-of-work.ts), before any task row is locked: the lock order of every write here.
 */
export class QueueStore {
  readonly #db: Database;
  readonly #uow: UnitOfWork;
  readonly #paging: Paging;
  readonly #due: WakeSignal;
  /** Largest payload, result or attempt record, as JSON. */
  readonly #maxJsonBytes: number;

  constructor(db: Database, uow: UnitOfWork, paging: Paging, due: WakeSignal, maxJsonBytes: number) {
    this.#db = db;
    this.#uow = uow;
    this.#paging = paging;
    this.#due = due;
    this.#maxJsonBytes = maxJsonBytes;
  }

  enqueue(tenant: string, tasks: readonly NewTask[]): Promise<Array<{ task: QueueTask; created: boolean }>> {
    for (const task of tasks) jsonWithinLimit("a task's payload", task.payload, this.#maxJsonBytes);
    return this.#uow.run(tenant, (tx) => enqueueIn(tx, tenant, tasks));
  }

  async get(tenant: string, taskId: string, readerId: string | null): Promise<QueueTask> {
    const em = this.#db.orm.em.fork();
    const row = await em.findOne(QueueTaskEntity, { tenantId: tenant, id: taskId });
    if (row === null) throw taskNotFound(taskId);
    const reads = await this.#readVersions(tenant, readerId, [row.id]);
    return toTask(row, reads.get(row.id));
  }

  async list(tenant: string, filter: TaskListFilter, request: PageRequest): Promise<Page<QueueTask>> {
    const page = this.#paging.start(TASK_LIST, tenant, filter, request);
    const after = Math.max(filter.updatedAfterVersion, Number(page.after?.[0] ?? 0));
    const where: Record<string, unknown> = { tenantId: tenant, version: { $gt: after } };
    if (filter.queue !== null) where.queue = filter.queue;
    if (filter.state !== null) where.state = filter.state;
    if (filter.lane !== null) where.lane = filter.lane;
    const rows = await this.#db.orm.em
      .fork()
      .find(QueueTaskEntity, where, { orderBy: { version: "asc" }, limit: page.limit + 1 });
    const reads = await this.#readVersions(
      tenant,
      filter.readerId,
      rows.map((r) => r.id),
    );
    return page.finish(
      rows.map((row) => toTask(row, reads.get(row.id))),
      (t) => [String(t.version)],
      taskBytes,
    );
  }

  async listDead(tenant: string, queue: string | null, request: PageRequest): Promise<Page<QueueTask>> {
    const page = this.#paging.start(DEAD_LIST, tenant, { queue }, request);
    const where: Record<string, unknown> = { tenantId: tenant, state: "dead" };
    if (queue !== null) where.queue = queue;
    if (page.after !== undefined) {
      const finishedAt = new Date(page.after[0] ?? "");
      where.$or = [{ finishedAt: { $gt: finishedAt } }, { finishedAt, id: { $gt: page.after[1] } }];
    }
    const rows = await this.#db.orm.em.fork().find(QueueTaskEntity, where, {
      orderBy: { finishedAt: "asc", id: "asc" },
      limit: page.limit + 1,
    });
    return page.finish(
      rows.map((row) => toTask(row)),
      (t) => [t.finishedAt?.toISOString() ?? "", t.id],
      taskBytes,
    );
  }

  /** One attempt: the tasks claimed, and when the next delayed task falls due (for a waiting claim). */
  async claim(tenant: string, request: ClaimRequest): Promise<{ tasks: QueueTask[]; nextDue: Date | null }> {
    const lanes = request.lanes === null ? null : JSON.stringify(request.lanes);
    // Most looks of a waiting worker find nothing: find that out without taking any lock.
    const probe = await this.#db.sql.first(probeDue, tenant, request.queue, lanes);
    if (probe?.due !== true) return { tasks: [], nextDue: probe?.nextDue ?? null };
    const tasks = await this.#uow.run(tenant, async (tx) => {
      const first = await tx.nextVersion(tenant, QUEUE_STREAM, request.maxTasks);
      const rows = await tx.sql.all(
        claimTasks,
        tenant,
        request.queue,
        lanes,
        request.maxTasks,
        request.workerId,
        request.leaseMs,
        first,
      );
      return rows.map(({ task }) => toTask(task)).sort((a, b) => a.version - b.version);
    });
    return { tasks, nextDue: null };
  }

  /**
   * Claims due tasks, waiting up to waitMs for some (enqueued on any replica, or delayed ones
   * falling due). Empty when the wait ended with none; the signal's reason when it aborted.
   */
  async claimWaiting(
    tenant: string,
    request: ClaimRequest,
    waitMs: number,
    signal: AbortSignal,
  ): Promise<QueueTask[]> {
    const deadline = Date.now() + waitMs;
    for (;;) {
      // Armed before looking: a task enqueued while we look still wakes us.
      const waiter = this.#due.arm(tenant, request.queue);
      try {
        const { tasks, nextDue } = await this.claim(tenant, request);
        if (tasks.length > 0) {
          if (signal.aborted) {
            // The caller went away while we claimed: nobody would work on them, so give them back.
            await this.#giveBack(tenant, request.workerId, tasks).catch(() => {});
            throw signal.reason;
          }
          return tasks;
        }
        const left = deadline - Date.now();
        if (left <= 0) return [];
        const untilDue = nextDue === null ? left : Math.max(1, nextDue.getTime() - Date.now());
        await waiter.wait(Math.min(left, untilDue), signal);
      } finally {
        waiter.disarm();
      }
    }
  }

  async renew(tenant: string, taskId: string, workerId: string, leaseMs: number): Promise<QueueTask> {
    // A renewal takes no version: it is a heartbeat that watchers need not see.
    const renewed = await this.#uow.run(tenant, (tx) =>
      tx.sql.first(renewTask, tenant, taskId, workerId, leaseMs),
    );
    if (renewed !== undefined) return toTask(renewed.task);
    const task = await this.get(tenant, taskId, null);
    if (isTerminal(task.state)) throw taskTerminal(task);
    if (task.workerId !== workerId || !isHeld(task.state))
      throw notTaskHolder(taskId, workerId, task.workerId);
    throw taskTimedOut(taskId);
  }

  /**
   * Completes tasks the worker holds, all or none. A task that has ended already is returned as it
   * is (changed = false): the first terminal state wins.
   */
  complete(
    tenant: string,
    workerId: string,
    items: ReadonlyArray<{ taskId: string; result: Record<string, unknown> }>,
  ): Promise<Ended[]> {
    for (const item of items) jsonWithinLimit("a task's result", item.result, this.#maxJsonBytes);
    return this.#uow.run(tenant, async (tx) => {
      const first = await tx.nextVersion(tenant, QUEUE_STREAM, items.length);
      const rows = await tx.sql.all(
        completeTasks,
        tenant,
        workerId,
        JSON.stringify(
          items.map((item, i) => ({ id: item.taskId, result: item.result, version: first + i })),
        ),
      );
      const done = new Map(rows.map(({ task }) => [task.id, toTask(task)]));
      wakeFreedLanes(tx, tenant, [...done.values()]);
      const ended: Ended[] = [];
      for (const item of items) {
        const task = done.get(item.taskId);
        if (task !== undefined) {
          ended.push({ task, changed: true });
          continue;
        }
        ended.push({ task: await endedAlready(tx, tenant, item.taskId, workerId), changed: false });
      }
      return ended;
    });
  }

  fail(
    tenant: string,
    taskId: string,
    workerId: string,
    failure: { error: string; noRetry: boolean; retryDelayMs: number | null },
  ): Promise<Ended> {
    return this.#uow.run(tenant, async (tx) => {
      const version = await tx.nextVersion(tenant, QUEUE_STREAM);
      const row = await tx.sql.first(
        failTask,
        tenant,
        taskId,
        workerId,
        failure.error.slice(0, MAX_ERROR_CHARS),
        failure.noRetry,
        failure.retryDelayMs,
        version,
      );
      if (row === undefined)
        return { task: await endedAlready(tx, tenant, taskId, workerId), changed: false };
      const task = toTask(row.task);
      wakeFreedLanes(tx, tenant, [task]);
      if (task.state === "pending" && task.runAt.getTime() <= Date.now()) wakeQueue(tx, tenant, task);
      return { task, changed: true };
    });
  }

  cancel(tenant: string, taskId: string, reason: string): Promise<Ended> {
    return this.#uow.run(tenant, async (tx) => {
      const version = await tx.nextVersion(tenant, QUEUE_STREAM);
      const row = await tx.sql.first(cancelTask, tenant, taskId, reason, version);
      if (row === undefined) {
        const task = await tx.em.findOne(QueueTaskEntity, { tenantId: tenant, id: taskId });
        if (task === null) throw taskNotFound(taskId);
        return { task: toTask(task), changed: false };
      }
      const task = toTask(row.task);
      wakeFreedLanes(tx, tenant, [task]);
      return { task, changed: true };
    });
  }

  updateAttempt(
    tenant: string,
    taskId: string,
    update: {
      workerId: string | null;
      state: QueueTaskState | null;
      latestAttempt: AttemptRef | null;
      sessionPath: string | null;
    },
  ): Promise<QueueTask> {
    jsonWithinLimit("latest_attempt", update.latestAttempt, this.#maxJsonBytes);
    return this.#uow.run(tenant, async (tx) => {
      const version = await tx.nextVersion(tenant, QUEUE_STREAM);
      const row = await tx.sql.first(
        updateAttempt,
        tenant,
        taskId,
        update.workerId,
        update.state,
        update.latestAttempt === null ? null : JSON.stringify(update.latestAttempt),
        update.sessionPath,
        version,
      );
      if (row === undefined) {
        const task = await tx.em.findOne(QueueTaskEntity, { tenantId: tenant, id: taskId });
        if (task === null) throw taskNotFound(taskId);
        const state = task.state as QueueTaskState;
        if (isTerminal(state)) throw taskTerminal(task);
        throw notTaskHolder(taskId, update.workerId ?? "", task.workerId ?? null);
      }
      const task = toTask(row.task);
      wakeFreedLanes(tx, tenant, [task]);
      return task;
    });
  }

  /** Makes DEAD tasks PENDING again: the ones named, else up to a batch of the queue's. */
  redrive(tenant: string, taskIds: readonly string[] | null, queue: string | null): Promise<number> {
    return this.#uow.run(tenant, async (tx) => {
      await tx.lockVersion(tenant, QUEUE_STREAM);
      const dead = await tx.sql.all(
        lockDead,
        tenant,
        taskIds === null ? null : JSON.stringify(taskIds),
        queue,
        REDRIVE_BATCH,
      );
      if (dead.length === 0) return 0;
      const first = await tx.nextVersion(tenant, QUEUE_STREAM, dead.length);
      const rows = await tx.sql.all(
        redriveTasks,
        tenant,
        JSON.stringify(dead.map(({ id }, i) => ({ id, version: first + i }))),
      );
      for (const task of uniqueQueues(rows.map((r) => toTask(r.task)))) wakeQueue(tx, tenant, task);
      return rows.length;
    });
  }

  async markRead(
    tenant: string,
    taskId: string,
    readerId: string,
  ): Promise<{ taskId: string; readerId: string; version: number; readAt: Date }> {
    const row = await this.#uow.run(tenant, (tx) => tx.sql.first(markRead, tenant, taskId, readerId));
    if (row === undefined) throw taskNotFound(taskId);
    const { cursor } = row;
    return {
      taskId: cursor.taskId,
      readerId: cursor.readerId,
      version: cursor.version,
      readAt: cursor.readAt,
    };
  }

  /** Stats and the `top` most urgent unfinished tasks, read in one snapshot. */
  async snapshot(
    tenant: string,
    queue: string | null,
    top: number,
  ): Promise<{ stats: QueueStats; top: QueueTask[] }> {
    const rows = await this.#db.sql.all(queueSnapshot, tenant, queue, top);
    const head = rows[0];
    if (head === undefined) throw new Error("the queue snapshot returned no row");
    const byState: Record<string, number> = {};
    const byLane: Record<string, number> = {};
    let total = 0;
    for (const [state, lane, count] of JSON.parse(head.groups) as Array<[string, string, number]>) {
      byState[state.toUpperCase()] = (byState[state.toUpperCase()] ?? 0) + count;
      byLane[lane] = (byLane[lane] ?? 0) + count;
      total += count;
    }
    return {
      stats: {
        queue,
        total,
        byState,
        byLane,
        due: head.due,
        oldestDueAgeMs: head.oldestDueMs,
        maxVersion: head.maxVersion,
        generatedAt: head.generatedAt,
      },
      top: rows.flatMap(({ task }) => (task === null ? [] : [toTask(task)])),
    };
  }

  async watchHead(tenant: string): Promise<number> {
    return (await this.#db.sql.first(tasksStreamHead, tenant))?.head ?? 0;
  }

  /**
   * Gives back tasks whose lease expired or whose attempt timed out: PENDING for another worker
   * while attempts remain, else DEAD. Run by every replica every few seconds; SKIP LOCKED keeps
   * replicas (and a holder completing right now) out of each other's way. Returns how many.
   */
  async sweepExpired(): Promise<number> {
    const tenants = await this.#db.sql.all(tenantsWithExpiredLeases, SWEEP_TENANTS);
    let swept = 0;
    for (const { tenantId } of tenants) {
      swept += await this.#uow.run(tenantId, async (tx) => {
        await tx.lockVersion(tenantId, QUEUE_STREAM);
        const expired = await tx.sql.all(lockExpired, tenantId, SWEEP_BATCH);
        if (expired.length === 0) return 0;
        const first = await tx.nextVersion(tenantId, QUEUE_STREAM, expired.length);
        const rows = await tx.sql.all(
          expireTasks,
          tenantId,
          JSON.stringify(expired.map(({ id }, i) => ({ id, version: first + i }))),
        );
        const tasks = rows.map((r) => toTask(r.task));
        for (const task of uniqueQueues(tasks)) wakeQueue(tx, tenantId, task);
        return tasks.length;
      });
    }
    return swept;
  }

  async #giveBack(tenant: string, workerId: string, tasks: readonly QueueTask[]): Promise<void> {
    await this.#uow.run(tenant, async (tx) => {
      const first = await tx.nextVersion(tenant, QUEUE_STREAM, tasks.length);
      const rows = await tx.sql.all(
        returnTasks,
        tenant,
        workerId,
        JSON.stringify(tasks.map((t, i) => ({ id: t.id, version: first + i }))),
      );
      for (const task of uniqueQueues(rows.map((r) => toTask(r.task)))) wakeQueue(tx, tenant, task);
    });
  }

  async #readVersions(
    tenant: string,
    readerId: string | null,
    taskIds: string[],
  ): Promise<Map<string, number>> {
    if (readerId === null || taskIds.length === 0) return new Map();
    const cursors = await this.#db.orm.em
      .fork()
      .find(QueueReadCursorEntity, { tenantId: tenant, readerId, taskId: { $in: taskIds } });
    return new Map(cursors.map((c) => [c.taskId, c.version]));
  }
}

/**
 * Enqueues tasks inside a transaction (EnqueueTasks, and each schedule tick): one insert for the
 * batch; keys that existed are answered by their first task, or replace it while it is PENDING.
 */
export async function enqueueIn(
  tx: Tx,
  tenant: string,
  tasks: readonly NewTask[],
): Promise<Array<{ task: QueueTask; created: boolean }>> {
  const first = await tx.nextVersion(tenant, QUEUE_STREAM, tasks.length);
  const rows = tasks.map((t, i) => ({
    id: uuidv7(),
    queue: t.queue,
    lane: t.lane,
    priority: t.priority,
    payload: t.payload,
    idempotency_key: t.idempotencyKey,
    payload_hash: stableHash(t.payload),
    serial: t.serial,
    run_at: t.runAt?.toISOString() ?? null,
    max_attempts: t.maxAttempts,
    backoff_initial_ms: t.backoff.initialMs,
    backoff_max_ms: t.backoff.maxMs,
    timeout_ms: t.timeoutMs,
    schedule_id: t.scheduleId,
    version: first + i,
  }));
  const serialLanes = tasks.filter((t) => t.serial).map((t) => ({ queue: t.queue, lane: t.lane }));
  if (serialLanes.length > 0) await tx.sql.first(ensureLanes, tenant, JSON.stringify(serialLanes));
  const inserted = new Map(
    (await tx.sql.all(insertTasks, tenant, JSON.stringify(rows))).map(({ task }) => [task.id, toTask(task)]),
  );
  const skipped = rows.filter((r) => !inserted.has(r.id));
  const existing = new Map<string, QueueTask>();
  if (skipped.length > 0) {
    const keys = skipped.map((r) => ({ queue: r.queue, key: r.idempotency_key }));
    for (const { task } of await tx.sql.all(tasksByKeys, tenant, JSON.stringify(keys))) {
      existing.set(keyOf(task.queue, task.idempotencyKey ?? ""), toTask(task));
    }
  }
  const results: Array<{ task: QueueTask; created: boolean }> = [];
  for (const [i, spec] of tasks.entries()) {
    const row = rows[i];
    if (row === undefined) throw new Error("enqueue lost a row");
    const created = inserted.get(row.id);
    if (created !== undefined) {
      results.push({ task: created, created: true });
      if (created.runAt.getTime() <= Date.now()) wakeQueue(tx, tenant, created);
      continue;
    }
    const key = spec.idempotencyKey ?? "";
    const first = existing.get(keyOf(spec.queue, key));
    if (first === undefined) throw new Error(`idempotency key ${key} conflicted but no task has it`);
    const samePayload = stableHash(first.payload) === row.payload_hash;
    if (spec.replace && !(samePayload && first.state !== "pending")) {
      if (first.state !== "pending") throw taskNotPending(first, key);
      const replaced = await tx.sql.first(replaceTask, tenant, JSON.stringify({ ...row, id: first.id }));
      if (replaced === undefined) throw taskNotPending(first, key);
      const task = toTask(replaced.task);
      existing.set(keyOf(spec.queue, key), task);
      if (spec.serial)
        await tx.sql.first(ensureLanes, tenant, JSON.stringify([{ queue: spec.queue, lane: spec.lane }]));
      if (task.runAt.getTime() <= Date.now()) wakeQueue(tx, tenant, task);
      results.push({ task, created: false });
      continue;
    }
    if (!samePayload) throw idempotencyKeyReused(key, first.id);
    results.push({ task: first, created: false });
  }
  return results;
}

/** A write that found nothing to change: the task ended already (returned), else the error why. */
async function endedAlready(tx: Tx, tenant: string, taskId: string, workerId: string): Promise<QueueTask> {
  const row = await tx.em.findOne(QueueTaskEntity, { tenantId: tenant, id: taskId });
  if (row === null) throw taskNotFound(taskId);
  const task = toTask(row);
  if (isTerminal(task.state)) return task;
  throw notTaskHolder(taskId, workerId, task.workerId);
}

const keyOf = (queue: string, key: string) => `${queue}\u0000${key}`;

/** Tells waiting claims of the task's queue that a task may be claimable. */
function wakeQueue(tx: Tx, tenant: string, task: QueueTask): void {
  tx.publish({ channel: QUEUE_DUE_CHANNEL, tenant, key: task.queue, seq: task.version });
}

/** A serial task that stopped being held frees its lane for the lane's next task. */
function wakeFreedLanes(tx: Tx, tenant: string, tasks: readonly QueueTask[]): void {
  for (const task of tasks) if (task.serial && !isHeld(task.state)) wakeQueue(tx, tenant, task);
}

function uniqueQueues(tasks: readonly QueueTask[]): QueueTask[] {
  const byQueue = new Map<string, QueueTask>();
  for (const task of tasks) {
    const seen = byQueue.get(task.queue);
    if (seen === undefined || seen.version < task.version) byQueue.set(task.queue, task);
  }
  return [...byQueue.values()];
}

const taskBytes = (task: QueueTask) =>
  JSON.stringify(task.payload).length + JSON.stringify(task.result ?? {}).length + 1024;

export function toTask(row: QueueTaskRow, readVersion = 0): QueueTask {
  return {
    id: row.id,
    queue: row.queue,
    lane: row.lane,
    priority: row.priority,
    payload: row.payload,
    idempotencyKey: row.idempotencyKey ?? null,
    state: row.state as QueueTaskState,
    serial: row.serial,
    runAt: row.runAt,
    attempts: row.attempts,
    maxAttempts: row.maxAttempts,
    backoff: { initialMs: row.backoffInitialMs, maxMs: row.backoffMaxMs },
    timeoutMs: row.timeoutMs ?? null,
    workerId: row.workerId ?? null,
    leaseExpiresAt: row.leaseExpiresAt ?? null,
    lastError: row.lastError ?? null,
    result: row.result ?? null,
    latestAttempt: (row.latestAttempt as AttemptRef | null | undefined) ?? null,
    sessionPath: row.sessionPath ?? null,
    cancelReason: row.cancelReason ?? null,
    scheduleId: row.scheduleId ?? null,
    version: row.version,
    readVersion,
    createdAt: row.createdAt,
    updatedAt: row.updatedAt,
    finishedAt: row.finishedAt ?? null,
  };
}
