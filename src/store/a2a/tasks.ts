import { create, fromBinary, toBinary, toJson } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { type Task, TaskSchema, type TaskState } from "../../../gen/agentstore/v1/a2a_task_pb.ts";
import {
  type StreamTaskUpdatesResponse,
  StreamTaskUpdatesResponseSchema,
  TaskUpdateSchema,
} from "../../../gen/agentstore/v1/task_service_pb.ts";
import { stableHash } from "../../core/hash.ts";
import { isStringTuple, type ListSpec, type Page, type PageRequest, type Paging } from "../../core/paging.ts";
import type { Database } from "../../db/database.ts";
import type { Tx, UnitOfWork } from "../../db/unit-of-work.ts";
import type { StreamRead, StreamSource } from "../../feed/stream-hub.ts";
import { requestIdReused } from "../runs/errors.ts";
import {
  A2aPushConfigEntity,
  A2aPushDeliveryEntity,
  A2aTaskEntity,
  type A2aTaskRow,
  A2aTaskUpdateEntity,
} from "./entities.ts";
import {
  a2aTaskNotFound,
  a2aTaskTerminal,
  encodeTask,
  foldUpdate,
  generationMismatch,
  isTerminal,
  type LogEntryCase,
  specPart,
  TASK_UPDATES_CHANNEL,
  type TaskUpdateCase,
  taskTooLarge,
} from "./model.ts";
import type { PushDeliveryStore } from "./push-deliveries.ts";
import { lockOrCreateTask, lockTask, readUpdates, sweepTasks } from "./sql.ts";

/** Most recently updated first, by (updated_at, id) descending. */
const TASK_LIST: ListSpec<string[]> = {
  name: "a2a_tasks",
  defaultSize: 50,
  maxSize: 100,
  isPosition: isStringTuple(2),
};

/** Bytes of log entries one stream read takes (a snapshot entry alone may be megabytes). */
const READ_BUDGET_BYTES = 4 * 1024 * 1024;

/** Rows one sweep statement deletes: a sweep holds row locks no longer than that takes. */
const SWEEP_BATCH = 500;

export interface TaskStoreOptions {
  /** TTL of a task saved without one; null: none. */
  defaultTtlMs: number | null;
  maxTaskBytes: number;
  /** Makes the push deliveries of each write in its transaction; undefined: delivery is off. */
  deliveries?: PushDeliveryStore;
}

export interface TaskFilter {
  contextId: string | null;
  state: TaskState | null;
  statusTimestampAfter: Date | null;
}

/** What a stream of a task's log yields: an entry, or the news that the task is gone. */
export type TaskLogItem = { gone: false; entry: StreamTaskUpdatesResponse } | { gone: true };

export const live = (row: A2aTaskRow, now: Date) =>
  row.generation > 0 && (row.expiresAt == null || row.expiresAt > now);

/** The stored task, with the store's fields filled in. */
export function taskFromRow(row: A2aTaskRow): Task {
  const task = fromBinary(TaskSchema, row.body);
  task.generation = BigInt(row.generation);
  task.updateSeq = BigInt(row.updateSeq);
  task.createTime = row.createdAt && timestampFromDate(row.createdAt);
  task.updateTime = row.updatedAt && timestampFromDate(row.updatedAt);
  task.expireTime = row.expiresAt == null ? undefined : timestampFromDate(row.expiresAt);
  return task;
}

/**
 * A2A tasks: whole-task saves and folded updates, each under the task's row lock, so that the
 * generation check, the terminal check, the snapshot and the log's next seq see one state. The
 * row lock also makes the per-task seq gapless and commit-ordered: a second writer waits for the
 * first to commit before it reads update_seq.
 */
export class TaskStore {
  readonly #db: Database;
  readonly #uow: UnitOfWork;
  readonly #paging: Paging;
  readonly #options: TaskStoreOptions;

  constructor(db: Database, uow: UnitOfWork, paging: Paging, options: TaskStoreOptions) {
    this.#db = db;
    this.#uow = uow;
    this.#paging = paging;
    this.#options = options;
  }

  /**
   * Creates or replaces a task. ttlMs: undefined keeps the task's TTL (a new task gets the
   * configured default), null removes it.
   */
  save(
    tenant: string,
    input: Task,
    expectedGeneration: bigint | undefined,
    ttlMs: number | null | undefined,
    /** Runs under the task's row lock once the save is allowed, before its entry is written. */
    beforeEntry?: (tx: Tx) => Promise<void>,
  ): Promise<{ task: Task; created: boolean }> {
    return this.#uow.run(tenant, async (tx) => {
      const now = new Date();
      const [locked] = await tx.sql.all(lockOrCreateTask, tenant, input.id);
      if (locked === undefined) throw new Error("lock_or_create_task returned no row");
      const row = locked.task;
      const exists = live(row, now);
      if (row.generation > 0 && !exists) {
        // Expired and not swept yet: its id starts a new task, with a new log and no push configs.
        await tx.em.nativeDelete(A2aTaskUpdateEntity, { tenantId: tenant, taskId: input.id });
        await tx.em.nativeDelete(A2aPushConfigEntity, { tenantId: tenant, taskId: input.id });
        await tx.em.nativeDelete(A2aPushDeliveryEntity, { tenantId: tenant, taskId: input.id });
      }
      const current = exists ? row.generation : 0;
      if (expectedGeneration !== undefined && BigInt(current) !== expectedGeneration) {
        throw generationMismatch(input.id, expectedGeneration, current);
      }
      const task = specPart(input);
      if (task.status !== undefined && task.status.timestamp === undefined) {
        task.status.timestamp = timestampFromDate(now);
      }
      const state = task.status?.state ?? 0;
      if (exists && isTerminal(row.state as TaskState) && state !== row.state) {
        throw a2aTaskTerminal(input.id, row.state as TaskState);
      }
      await beforeEntry?.(tx);
      const generation = current + 1;
      const seq = (exists ? row.updateSeq : 0) + 1;
      const keptTtl = exists ? (row.ttlMs ?? null) : this.#options.defaultTtlMs;
      const ttl = ttlMs === undefined ? keptTtl : ttlMs;
      await this.#write(tx, tenant, task, {
        generation,
        firstSeq: seq,
        sizeChecked: true,
        entries: [{ case: "task", value: task }],
        ttlMs: ttl,
        createdAt: exists ? (row.createdAt ?? now) : now,
        now,
      });
      return {
        task: taskFromRow({
          ...row,
          body: encodeTask(task),
          generation,
          updateSeq: seq,
          ttlMs: ttl,
          expiresAt: ttl === null ? null : new Date(now.getTime() + ttl),
          createdAt: exists ? row.createdAt : now,
          updatedAt: now,
        }),
        created: !exists,
      };
    });
  }

  /** Appends updates to a task's log and folds them into it; all or nothing. */
  publish(
    tenant: string,
    taskId: string,
    updates: readonly TaskUpdateCase[],
    expectedGeneration: bigint | undefined,
    requestId: string | null,
  ): Promise<{ task: Task; firstSeq: number; lastSeq: number; published: boolean }> {
    const requestHash = requestId === null ? null : stableHash(updates.map(updateJson));
    return this.#uow.run(tenant, async (tx) => {
      const now = new Date();
      const row = (await tx.sql.first(lockTask, tenant, taskId))?.task;
      if (row === undefined || !live(row, now)) throw a2aTaskNotFound(taskId);
      if (requestId !== null) {
        // Under the task's row lock: a retry racing its first call finds it committed or waits.
        const earlier = await tx.em.findOne(A2aTaskUpdateEntity, { tenantId: tenant, taskId, requestId });
        if (earlier !== null) {
          if (earlier.requestHash !== requestHash) throw requestIdReused(requestId);
          return {
            task: taskFromRow(row),
            firstSeq: earlier.seq,
            lastSeq: earlier.requestLastSeq ?? earlier.seq,
            published: false,
          };
        }
      }
      if (expectedGeneration !== undefined && BigInt(row.generation) !== expectedGeneration) {
        throw generationMismatch(taskId, expectedGeneration, row.generation);
      }
      const task = fromBinary(TaskSchema, row.body);
      const entries = updates.map((update, index) => foldUpdate(task, update, index, now));
      const generation = row.generation + 1;
      const firstSeq = row.updateSeq + 1;
      const ttlMs = row.ttlMs ?? null;
      const body = await this.#write(tx, tenant, task, {
        generation,
        firstSeq,
        entries,
        request: requestId === null ? undefined : { id: requestId, hash: requestHash ?? "" },
        // Ending a task is never refused for its size: a full task must still be cancellable, and
        // it takes no more updates after that.
        sizeChecked: !isTerminal(task.status?.state ?? 0),
        ttlMs,
        createdAt: row.createdAt ?? now,
        now,
      });
      const lastSeq = firstSeq + entries.length - 1;
      return {
        task: taskFromRow({
          ...row,
          body,
          generation,
          updateSeq: lastSeq,
          expiresAt: ttlMs === null ? null : new Date(now.getTime() + ttlMs),
          updatedAt: now,
        }),
        firstSeq,
        lastSeq,
        published: true,
      };
    });
  }

  /** Writes the locked row's new snapshot and appends the entries to its log; returns the body. */
  async #write(
    tx: Tx,
    tenant: string,
    task: Task,
    w: {
      generation: number;
      firstSeq: number;
      entries: readonly LogEntryCase[];
      /** The call's request_id, kept on its first entry. */
      request?: { id: string; hash: string };
      sizeChecked: boolean;
      ttlMs: number | null;
      createdAt: Date;
      now: Date;
    },
  ): Promise<Uint8Array> {
    const body = encodeTask(task);
    if (w.sizeChecked && body.byteLength > this.#options.maxTaskBytes) {
      throw taskTooLarge(task.id, body.byteLength, this.#options.maxTaskBytes);
    }
    const state = task.status?.state ?? 0;
    const timestamp = task.status?.timestamp;
    await tx.em.nativeUpdate(
      A2aTaskEntity,
      { tenantId: tenant, id: task.id },
      {
        contextId: task.contextId,
        state,
        statusTime:
          timestamp === undefined
            ? null
            : new Date(Number(timestamp.seconds) * 1000 + Math.floor(timestamp.nanos / 1e6)),
        body: Buffer.from(body),
        generation: w.generation,
        updateSeq: w.firstSeq + w.entries.length - 1,
        ttlMs: w.ttlMs,
        expiresAt: w.ttlMs === null ? null : new Date(w.now.getTime() + w.ttlMs),
        createdAt: w.createdAt,
        updatedAt: w.now,
      },
    );
    await tx.em.insertMany(
      A2aTaskUpdateEntity,
      w.entries.map((update, i) => {
        const seq = w.firstSeq + i;
        return {
          tenantId: tenant,
          taskId: task.id,
          seq,
          terminal: endsTask(update),
          ...(i === 0 && w.request !== undefined
            ? {
                requestId: w.request.id,
                requestHash: w.request.hash,
                requestLastSeq: w.firstSeq + w.entries.length - 1,
              }
            : {}),
          body: Buffer.from(
            toBinary(
              StreamTaskUpdatesResponseSchema,
              create(StreamTaskUpdatesResponseSchema, {
                seq: BigInt(seq),
                generation: BigInt(w.generation),
                update,
              }),
            ),
          ),
          createdAt: w.now,
        };
      }),
    );
    const lastSeq = w.firstSeq + w.entries.length - 1;
    await this.#options.deliveries?.record(tx, tenant, task.id, w.firstSeq, lastSeq);
    tx.publish({ channel: TASK_UPDATES_CHANNEL, tenant, key: task.id, seq: lastSeq });
    return body;
  }

  /** The task, or NOT_FOUND when it does not exist or expired. */
  async get(tenant: string, taskId: string): Promise<Task> {
    const row = await this.#db.orm.em.fork().findOne(A2aTaskEntity, { tenantId: tenant, id: taskId });
    if (row === null || !live(row, new Date())) throw a2aTaskNotFound(taskId);
    return taskFromRow(row);
  }

  /** Deletes a task, its log, its push configs and deliveries; open streams of it end with NOT_FOUND. */
  delete(tenant: string, taskId: string): Promise<void> {
    return this.#uow.run(tenant, async (tx) => {
      const row = (await tx.sql.first(lockTask, tenant, taskId))?.task;
      if (row === undefined || !live(row, new Date())) throw a2aTaskNotFound(taskId);
      await tx.em.nativeDelete(A2aTaskUpdateEntity, { tenantId: tenant, taskId });
      await tx.em.nativeDelete(A2aPushConfigEntity, { tenantId: tenant, taskId });
      await tx.em.nativeDelete(A2aPushDeliveryEntity, { tenantId: tenant, taskId });
      await tx.em.nativeDelete(A2aTaskEntity, { tenantId: tenant, id: taskId });
      // Wakes the task's followers: their next read finds the task gone.
      tx.publish({ channel: TASK_UPDATES_CHANNEL, tenant, key: taskId, seq: row.updateSeq + 1 });
    });
  }

  /**
   * Most recently updated first. Keyset on (updated_at, id): a task not written while a client
   * pages appears exactly once; one written meanwhile moves ahead of the pages already read and
   * appears at most once.
   */
  async list(
    tenant: string,
    filter: TaskFilter,
    request: PageRequest,
  ): Promise<Page<Task> & { total: number }> {
    const page = this.#paging.start(
      TASK_LIST,
      tenant,
      { ...filter, statusTimestampAfter: filter.statusTimestampAfter?.toISOString() ?? null },
      request,
    );
    const now = new Date();
    const conditions: Record<string, unknown>[] = [
      { tenantId: tenant, generation: { $gt: 0 } },
      { $or: [{ expiresAt: null }, { expiresAt: { $gt: now } }] },
    ];
    if (filter.contextId !== null) conditions.push({ contextId: filter.contextId });
    if (filter.state !== null) conditions.push({ state: filter.state });
    if (filter.statusTimestampAfter !== null) {
      conditions.push({ statusTime: { $gte: filter.statusTimestampAfter } });
    }
    const em = this.#db.orm.em.fork();
    const total = await em.count(A2aTaskEntity, { $and: conditions });
    if (page.after !== undefined) {
      const [updatedAt = "", id = ""] = page.after;
      const at = new Date(updatedAt);
      conditions.push({ $or: [{ updatedAt: { $lt: at } }, { updatedAt: at, id: { $lt: id } }] });
    }
    const rows = await em.find(
      A2aTaskEntity,
      { $and: conditions },
      { orderBy: { updatedAt: "desc", id: "desc" }, limit: page.limit + 1 },
    );
    const result = page.finish(
      rows,
      (row) => [row.updatedAt.toISOString(), row.id],
      (row) => row.body.byteLength,
    );
    return { items: result.items.map(taskFromRow), nextPageToken: result.nextPageToken, total };
  }

  /** The most recently updated live tasks. */
  async listRecent(tenant: string, limit: number): Promise<Task[]> {
    const now = new Date();
    const rows = await this.#db.orm.em
      .fork()
      .find(
        A2aTaskEntity,
        { tenantId: tenant, generation: { $gt: 0 }, $or: [{ expiresAt: null }, { expiresAt: { $gt: now } }] },
        { orderBy: { updatedAt: "desc", id: "desc" }, limit },
      );
    return rows.map(taskFromRow);
  }

  /** Deletes expired tasks in batches; returns how many. */
  async sweepExpired(): Promise<number> {
    let swept = 0;
    for (;;) {
      const rows = await this.#uow.run(null, (tx) => tx.sql.all(sweepTasks, new Date(), SWEEP_BATCH));
      swept += rows.length;
      if (rows.length < SWEEP_BATCH) return swept;
    }
  }

  /** The update log as a stream source (StreamTaskUpdates, through a LogHub). */
  updateSource(): StreamSource<TaskLogItem> {
    return {
      channel: TASK_UPDATES_CHANNEL,
      head: async (tenant, taskId) => Number((await this.get(tenant, taskId)).updateSeq),
      read: async (tenant, taskId, after, limit): Promise<StreamRead<TaskLogItem>> => {
        const rows = await this.#db.sql.all(
          readUpdates,
          tenant,
          taskId,
          after,
          limit,
          new Date(),
          READ_BUDGET_BYTES,
        );
        const first = rows[0];
        if (first === undefined || !first.live) {
          // Deleted or expired: one last entry tells the followers, and ends their streams.
          return {
            entries: [{ seq: after + 1, terminal: true, bytes: 0, value: { gone: true } }],
            through: after + 1,
            more: false,
          };
        }
        const entries = rows.flatMap((r) =>
          r.seq === null || r.body === null
            ? []
            : [
                {
                  seq: r.seq,
                  terminal: r.terminal === true,
                  bytes: r.body.byteLength,
                  value: { gone: false as const, entry: fromBinary(StreamTaskUpdatesResponseSchema, r.body) },
                },
              ],
        );
        const through = entries.at(-1)?.seq ?? after;
        return { entries, through, more: through < first.updateSeq };
      },
    };
  }
}

/** An update as JSON, for the request hash (key order does not matter to stableHash). */
const updateJson = (update: TaskUpdateCase) => toJson(TaskUpdateSchema, create(TaskUpdateSchema, { update }));

/** The entry leaves the task terminal: streams end after it. */
function endsTask(entry: LogEntryCase): boolean {
  switch (entry.case) {
    case "task":
      return isTerminal(entry.value.status?.state ?? 0);
    case "statusUpdate":
      return isTerminal(entry.value.status?.state ?? 0);
    default:
      return false;
  }
}
