import { create, fromBinary, toJson } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  type PushDelivery,
  PushDeliverySchema,
  PushDeliveryState,
} from "../../../gen/agentstore/v1/push_delivery_pb.ts";
import { StreamTaskUpdatesResponseSchema } from "../../../gen/agentstore/v1/task_service_pb.ts";
import { isStringTuple, type ListSpec, type Page, type PageRequest, type Paging } from "../../core/paging.ts";
import type { Database } from "../../db/database.ts";
import type { Tx, UnitOfWork } from "../../db/unit-of-work.ts";
import {
  A2aPushConfigEntity,
  type A2aPushConfigRow,
  A2aPushDeliveryEntity,
  type A2aPushDeliveryRow,
  A2aTaskEntity,
} from "./entities.ts";
import { a2aTaskNotFound } from "./model.ts";
import { pushConfigNotFound } from "./push-configs.ts";
import {
  claimDeliveries,
  deliveredDelivery,
  failedDelivery,
  insertDeliveries,
  lockConfig,
  lockTaskConfigs,
  nextDeliveryDue,
  redriveDeliveries,
  sweepDelivered,
} from "./sql.ts";
import { live } from "./tasks.ts";

/** The feed channel that tells every replica's delivery workers of new deliveries. */
export const PUSH_DELIVERY_CHANNEL = "a2a_push_deliveries";

/** By seq. */
const DELIVERY_LIST: ListSpec<string[]> = {
  name: "a2a_push_deliveries",
  defaultSize: 100,
  maxSize: 500,
  isPosition: isStringTuple(1),
};

/** Rows one retention sweep statement deletes. */
const SWEEP_BATCH = 500;

/** Dead deliveries one redrive without ids takes. */
const REDRIVE_LIMIT = 1000;

const STATES: Record<string, PushDeliveryState> = {
  pending: PushDeliveryState.PENDING,
  sending: PushDeliveryState.SENDING,
  delivered: PushDeliveryState.DELIVERED,
  dead: PushDeliveryState.DEAD,
};
const STATE_NAMES = new Map(Object.entries(STATES).map(([name, state]) => [state, name]));

export function deliveryToProto(row: A2aPushDeliveryRow): PushDelivery {
  return create(PushDeliverySchema, {
    id: row.id,
    taskId: row.taskId,
    configId: row.configId,
    seq: BigInt(row.seq),
    state: STATES[row.state] ?? PushDeliveryState.UNSPECIFIED,
    attempts: row.attempts,
    maxAttempts: row.maxAttempts,
    lastError: row.lastError ?? "",
    lastStatusCode: row.lastStatusCode ?? 0,
    nextAttemptTime:
      row.state === "pending" && row.nextAttemptAt != null ? timestampFromDate(row.nextAttemptAt) : undefined,
    createTime: timestampFromDate(row.createdAt),
    deliverTime: row.deliveredAt == null ? undefined : timestampFromDate(row.deliveredAt),
    updateTime: timestampFromDate(row.updatedAt),
  });
}

/** A config's row as a claim reads it (token and credentials still sealed). */
export type DeliveryConfigRow = Pick<
  A2aPushConfigRow,
  "tenantId" | "taskId" | "id" | "url" | "token" | "scheme" | "credentials"
>;

export interface ClaimedDelivery {
  delivery: A2aPushDeliveryRow;
  /** null: the task, the update or the config is gone. */
  config: DeliveryConfigRow | null;
  body: string | null;
}

/** A stored log entry as A2A v1.0's StreamResponse: the event only, the seq travels in a header. */
function streamResponseJson(body: Uint8Array): string {
  const json = toJson(
    StreamTaskUpdatesResponseSchema,
    fromBinary(StreamTaskUpdatesResponseSchema, body),
  ) as Record<string, unknown>;
  delete json.seq;
  delete json.generation;
  return JSON.stringify(json);
}

export interface PushDeliveryOptions {
  maxAttempts: number;
  backoffInitialMs: number;
  backoffMaxMs: number;
}

/**
 * Push deliveries: made in the transaction of the task update they notify (`record`), taken by
 * the workers of any replica (`claim`, see claimDeliveries for the order and exclusivity
 * guarantees), and settled by the worker that holds them.
 */
export class PushDeliveryStore {
  readonly #db: Database;
  readonly #uow: UnitOfWork;
  readonly #paging: Paging;
  readonly #options: PushDeliveryOptions;

  constructor(db: Database, uow: UnitOfWork, paging: Paging, options: PushDeliveryOptions) {
    this.#db = db;
    this.#uow = uow;
    this.#paging = paging;
    this.#options = options;
  }

  /** In the update's transaction, under the task's row lock: a delivery per config and seq. */
  async record(tx: Tx, tenant: string, taskId: string, firstSeq: number, lastSeq: number): Promise<void> {
    // Before the statement that makes the deliveries: it then sees every delivery finished.
    const configs = await tx.sql.all(lockTaskConfigs, tenant, taskId);
    if (configs.length === 0) return;
    const made = await tx.sql.first(
      insertDeliveries,
      tenant,
      taskId,
      firstSeq,
      lastSeq,
      this.#options.maxAttempts,
    );
    if ((made?.made ?? 0) > 0)
      tx.publish({ channel: PUSH_DELIVERY_CHANNEL, tenant, key: taskId, seq: lastSeq });
  }

  /** A page of a config's deliveries, by seq. */
  async list(
    tenant: string,
    taskId: string,
    configId: string,
    state: PushDeliveryState,
    request: PageRequest,
  ): Promise<Page<PushDelivery>> {
    const page = this.#paging.start(DELIVERY_LIST, tenant, { taskId, configId, state }, request);
    await this.#requireConfig(tenant, taskId, configId);
    const after = page.after?.[0];
    const stateName = state === PushDeliveryState.UNSPECIFIED ? undefined : STATE_NAMES.get(state);
    const rows = await this.#db.orm.em.fork().find(
      A2aPushDeliveryEntity,
      {
        tenantId: tenant,
        taskId,
        configId,
        ...(stateName === undefined ? {} : { state: stateName }),
        ...(after === undefined ? {} : { seq: { $gt: Number(after) } }),
      },
      { orderBy: { seq: "asc" }, limit: page.limit + 1 },
    );
    const result = page.finish(rows, (row) => [String(row.seq)]);
    return { items: result.items.map(deliveryToProto), nextPageToken: result.nextPageToken };
  }

  /** DEAD deliveries of a config PENDING again: the named ones, else the oldest. */
  redrive(tenant: string, taskId: string, configId: string, ids: readonly string[]): Promise<PushDelivery[]> {
    return this.#uow.run(tenant, async (tx) => {
      await this.#requireConfig(tenant, taskId, configId, tx);
      const rows = await tx.sql.all(
        redriveDeliveries,
        tenant,
        taskId,
        configId,
        ids.length === 0 ? null : JSON.stringify(ids),
        ids.length === 0 ? REDRIVE_LIMIT : ids.length,
      );
      if (rows.length > 0) tx.publish({ channel: PUSH_DELIVERY_CHANNEL, tenant, key: taskId, seq: 0 });
      return rows.map((r) => deliveryToProto(r.delivery)).sort((a, b) => Number(a.seq - b.seq));
    });
  }

  /**
   * Takes up to `limit` due deliveries for a worker, across tenants, each with what sending it
   * needs (one statement): its config's row, and its body as an A2A v1.0 StreamResponse (JSON),
   * or null when the task, the update or the config is gone (deleted, expired).
   */
  async claim(limit: number, workerId: string, leaseMs: number): Promise<ClaimedDelivery[]> {
    const rows = await this.#uow.run(null, (tx) => tx.sql.all(claimDeliveries, limit, workerId, leaseMs));
    return rows.map((r) => {
      const d = r.delivery;
      const gone = !r.taskLive || r.updateBody === null || r.configUrl === null;
      return {
        delivery: d,
        config: gone
          ? null
          : {
              tenantId: d.tenantId,
              taskId: d.taskId,
              id: d.configId,
              url: r.configUrl ?? "",
              token: r.configToken,
              scheme: r.configScheme,
              credentials: r.configCredentials,
            },
        body: gone || r.updateBody === null ? null : streamResponseJson(r.updateBody),
      };
    });
  }

  /** Deletes DELIVERED deliveries older than the retention, in batches; returns how many. */
  async sweepDelivered(retentionMs: number): Promise<number> {
    let swept = 0;
    for (;;) {
      const before = new Date(Date.now() - retentionMs);
      const rows = await this.#uow.run(null, (tx) => tx.sql.all(sweepDelivered, before, SWEEP_BATCH));
      swept += rows.length;
      if (rows.length < SWEEP_BATCH) return swept;
    }
  }

  /** When a delivery falls due next (a retry, or a dead sender's lease); null: none waits. */
  async nextDue(): Promise<Date | null> {
    return (await this.#db.sql.first(nextDeliveryDue))?.due ?? null;
  }

  /** Records a 2xx answer; false when the worker no longer held the delivery. */
  async delivered(row: A2aPushDeliveryRow, workerId: string, status: number): Promise<boolean> {
    // No feed change: the config's next delivery may go now, and the worker that settled this one
    // looks at once (a replica whose workers are all busy leaves it to the others' next look).
    const done = await this.#uow.run(row.tenantId, async (tx) => {
      // Before the statement that makes the next one due: it then sees every delivery made.
      await tx.sql.all(lockConfig, row.tenantId, row.taskId, row.configId);
      return tx.sql.first(deliveredDelivery, row.tenantId, row.id, workerId, status);
    });
    return done !== undefined;
  }

  /** Records a failed attempt; the delivery is DEAD when `permanent` or out of attempts. */
  async failed(
    row: A2aPushDeliveryRow,
    workerId: string,
    failure: { error: string; status: number | null; permanent: boolean; retryDelayMs: number | null },
  ): Promise<A2aPushDeliveryRow | undefined> {
    return this.#uow.run(row.tenantId, async (tx) => {
      await tx.sql.all(lockConfig, row.tenantId, row.taskId, row.configId);
      const settled = await tx.sql.first(
        failedDelivery,
        row.tenantId,
        row.id,
        workerId,
        failure.error,
        failure.status,
        failure.permanent,
        failure.retryDelayMs === null ? null : Math.min(failure.retryDelayMs, this.#options.backoffMaxMs),
        this.#options.backoffInitialMs,
        this.#options.backoffMaxMs,
      );
      return settled?.delivery;
    });
  }

  /** NOT_FOUND unless the task is live and has the config. */
  async #requireConfig(tenant: string, taskId: string, configId: string, tx?: Tx): Promise<void> {
    const em = tx?.em ?? this.#db.orm.em.fork();
    const task = await em.findOne(A2aTaskEntity, { tenantId: tenant, id: taskId });
    if (task === null || !live(task, new Date())) throw a2aTaskNotFound(taskId);
    const config = await em.findOne(A2aPushConfigEntity, { tenantId: tenant, taskId, id: configId });
    if (config === null) throw pushConfigNotFound(taskId, configId);
  }
}
