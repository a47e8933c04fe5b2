import { randomUUID } from "node:crypto";
import { Cron } from "croner";
import { invalidArgument } from "../../core/errors.ts";
import { jsonWithinLimit } from "../../core/limits.ts";
import { isStringTuple, type ListSpec, type Page, type PageRequest, type Paging } from "../../core/paging.ts";
import type { Database } from "../../db/database.ts";
import type { Tx, UnitOfWork } from "../../db/unit-of-work.ts";
import { QueueScheduleEntity, type QueueScheduleRow } from "./entities.ts";
import { type NewTask, type Schedule, scheduleExists, scheduleNotFound } from "./model.ts";
import { anyDueSchedule, lockDueSchedules } from "./sql.ts";
import { enqueueIn } from "./tasks.ts";

const SCHEDULE_LIST: ListSpec<string[]> = {
  name: "queue_schedules",
  defaultSize: 50,
  maxSize: 500,
  isPosition: isStringTuple(1),
};

/** Most due schedules one tick fires, across tenants. */
const TICK_BATCH = 100;

/** A schedule that has no tick left (a cron with a year that has passed) waits here forever. */
const NEVER = new Date("9999-12-31T00:00:00Z");

/**
 * Recurring work. Cron expressions are parsed and stepped by croner (five fields, or six with
 * seconds first), in the schedule's IANA time zone.
 *
 * Exactly once per tick: every replica ticks, but a due schedule is fired under its row lock
 * (SKIP LOCKED, so replicas share the due schedules instead of queueing on them), in the same
 * transaction as the task it enqueues and the move of next_run_at; the task's idempotency key is
 * derived from the schedule and the tick, so even a second firing of the same tick would return
 * the first task.
 *
 * Late and missed ticks: a tick that is late by less than the catch-up window (a minute by
 * default: a busy replica, a short restart) is enqueued as usual, so none is lost. Ticks missed by
 * more than that (every replica was down) are skipped, except the latest of them, which is
 * enqueued once when the service comes back. A schedule whose hourly ticks were missed for a day
 * thus runs once, not 24 times.
 */
export class ScheduleStore {
  readonly #db: Database;
  readonly #uow: UnitOfWork;
  readonly #paging: Paging;
  readonly #catchUpMs: number;
  readonly #maxJsonBytes: number;

  constructor(
    db: Database,
    uow: UnitOfWork,
    paging: Paging,
    options: { catchUpMs: number; maxJsonBytes: number },
  ) {
    this.#db = db;
    this.#uow = uow;
    this.#paging = paging;
    this.#catchUpMs = options.catchUpMs;
    this.#maxJsonBytes = options.maxJsonBytes;
  }

  async create(
    tenant: string,
    schedule: { id: string | null; queue: string; cron: string; timeZone: string; template: NewTask },
  ): Promise<Schedule> {
    const cron = parseCron(schedule.cron, schedule.timeZone);
    jsonWithinLimit("the template's payload", schedule.template.payload, this.#maxJsonBytes);
    const id = schedule.id ?? `schedule-${randomUUID()}`;
    const row = await this.#uow.run(tenant, async (tx) => {
      if ((await tx.em.count(QueueScheduleEntity, { tenantId: tenant, id })) > 0) throw scheduleExists(id);
      const entity = tx.em.create(QueueScheduleEntity, {
        tenantId: tenant,
        id,
        queue: schedule.queue,
        cron: schedule.cron,
        timeZone: schedule.timeZone,
        template: templateJson(schedule.template),
        nextRunAt: cron.nextRun(new Date()) ?? NEVER,
        lastRunAt: null,
      });
      await tx.em.flush();
      return entity;
    });
    return toSchedule(row);
  }

  async list(tenant: string, queue: string | null, request: PageRequest): Promise<Page<Schedule>> {
    const page = this.#paging.start(SCHEDULE_LIST, tenant, { queue }, request);
    const where: Record<string, unknown> = { tenantId: tenant };
    if (queue !== null) where.queue = queue;
    if (page.after !== undefined) where.id = { $gt: page.after[0] };
    const rows = await this.#db.orm.em
      .fork()
      .find(QueueScheduleEntity, where, { orderBy: { id: "asc" }, limit: page.limit + 1 });
    return page.finish(rows.map(toSchedule), (s) => [s.id]);
  }

  async delete(tenant: string, scheduleId: string, allowMissing: boolean): Promise<void> {
    const deleted = await this.#uow.run(tenant, (tx) =>
      tx.em.nativeDelete(QueueScheduleEntity, { tenantId: tenant, id: scheduleId }),
    );
    if (deleted === 0 && !allowMissing) throw scheduleNotFound(scheduleId);
  }

  /** Fires every due schedule (of every tenant) once; returns how many tasks it enqueued. */
  async tick(): Promise<number> {
    if ((await this.#db.sql.first(anyDueSchedule))?.due !== true) return 0;
    return this.#uow.run(null, async (tx) => {
      // Locked in (tenant, id) order, so that the tenants' version locks are taken in order too.
      const due = await tx.sql.all(lockDueSchedules, TICK_BATCH);
      let fired = 0;
      for (const { tenantId, id } of due) {
        const row = await tx.em.findOne(QueueScheduleEntity, { tenantId, id });
        if (row !== null) fired += await fire(tx, row, this.#catchUpMs);
      }
      return fired;
    });
  }
}

/** Enqueues the ticks that have passed (see the class comment) and moves to the next tick. */
async function fire(tx: Tx, row: QueueScheduleRow, catchUpMs: number): Promise<number> {
  const now = new Date();
  let cron: Cron;
  try {
    cron = parseCron(row.cron, row.timeZone);
  } catch {
    row.nextRunAt = NEVER;
    return 0;
  }
  const ticks: Date[] = [];
  const windowStart = new Date(now.getTime() - catchUpMs);
  for (
    let tick = row.nextRunAt >= windowStart ? row.nextRunAt : cron.nextRun(windowStart);
    tick !== null && tick <= now;
    tick = cron.nextRun(tick)
  ) {
    ticks.push(tick);
  }
  if (ticks.length === 0) {
    const [latest] = cron.previousRuns(1, new Date(now.getTime() + 1));
    ticks.push(latest !== undefined && latest >= row.nextRunAt ? latest : row.nextRunAt);
  }
  const template = fromTemplateJson(row.template, row.queue);
  await enqueueIn(
    tx,
    row.tenantId,
    ticks.map((tick) => ({
      ...template,
      idempotencyKey: `schedule:${row.id}:${tick.toISOString()}`,
      replace: false,
      runAt: tick,
      scheduleId: row.id,
    })),
  );
  row.lastRunAt = ticks.at(-1) ?? null;
  row.nextRunAt = cron.nextRun(now) ?? NEVER;
  return ticks.length;
}

/** A cron expression in a time zone, or INVALID_ARGUMENT (INVALID_CRON) saying what is wrong. */
export function parseCron(expression: string, timeZone: string): Cron {
  try {
    const cron = new Cron(expression, { timezone: timeZone === "" ? "UTC" : timeZone, paused: true });
    // Time zones are checked only when a date is converted.
    cron.nextRun(new Date());
    return cron;
  } catch (err) {
    throw invalidArgument(
      "INVALID_CRON",
      `cron "${expression}" in time zone "${timeZone || "UTC"}": ${(err as Error).message}`,
      {
        field: "schedule.cron",
      },
    );
  }
}

function templateJson(task: NewTask): Record<string, unknown> {
  return {
    lane: task.lane,
    priority: task.priority,
    payload: task.payload,
    maxAttempts: task.maxAttempts,
    backoff: task.backoff,
    timeoutMs: task.timeoutMs,
    serial: task.serial,
  };
}

function fromTemplateJson(json: Record<string, unknown>, queue: string): NewTask {
  const t = json as {
    lane: string;
    priority: number;
    payload: Record<string, unknown>;
    maxAttempts: number;
    backoff: { initialMs: number; maxMs: number };
    timeoutMs: number | null;
    serial: boolean;
  };
  return {
    queue,
    lane: t.lane,
    priority: t.priority,
    payload: t.payload,
    idempotencyKey: null,
    replace: false,
    runAt: null,
    maxAttempts: t.maxAttempts,
    backoff: t.backoff,
    timeoutMs: t.timeoutMs,
    serial: t.serial,
    scheduleId: null,
  };
}

function toSchedule(row: QueueScheduleRow): Schedule {
  return {
    id: row.id,
    queue: row.queue,
    cron: row.cron,
    timeZone: row.timeZone,
    template: fromTemplateJson(row.template, row.queue),
    nextRunAt: row.nextRunAt,
    lastRunAt: row.lastRunAt ?? null,
    createdAt: row.createdAt,
  };
}
