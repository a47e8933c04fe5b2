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
  A2aPushDeliveryEntity,
  type A2aPushDeliveryRow,
  A2aTaskEntity,
  A2aTaskUpdateEntity,
} from "./entities.ts";
import { a2aTaskNotFound } from "./model.ts";
import { pushConfigNotFound } from "./push-configs.ts";
import {
  claimDeliveries,
  deliveredDelivery,
  failedDelivery,
  insertDeliveries,
  nextDeliveryDue,
  redriveDeliveries,
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
    nextAttemptTime: row.state === "pending" ? timestampFromDate(row.nextAttemptAt) : undefined,
    createTime: timestampFromDate(row.createdAt),
    deliverTime: row.deliveredAt == null ? undefined : timestampFromDate(row.deliveredAt),
    updateTime: timestampFromDate(row.updatedAt),
  });
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

  /** Takes up to `limit` due deliveries for a worker, across tenants. */
  async claim(limit: number, workerId: string, leaseMs: number): Promise<A2aPushDeliveryRow[]> {
    const rows = await this.#uow.run(null, (tx) => tx.sql.all(claimDeliveries, limit, workerId, leaseMs));
    return rows.map((r) => r.delivery);
  }

  /** When a delivery falls due next (a retry, or a dead sender's lease); null: none waits. */
  async nextDue(): Promise<Date | null> {
    return (await this.#db.sql.first(nextDeliveryDue))?.due ?? null;
  }

  /**
   * What a delivery sends: the update as an A2A v1.0 StreamResponse (JSON), or null when the
   * task or the update is gone (deleted, expired: its deliveries go with it).
   */
  async payload(row: A2aPushDeliveryRow): Promise<string | null> {
    const em = this.#db.orm.em.fork();
    const task = await em.findOne(A2aTaskEntity, { tenantId: row.tenantId, id: row.taskId });
    if (task === null || !live(task, new Date())) return null;
    const update = await em.findOne(A2aTaskUpdateEntity, {
      tenantId: row.tenantId,
      taskId: row.taskId,
      seq: row.seq,
    });
    if (update === null) return null;
    const json = toJson(
      StreamTaskUpdatesResponseSchema,
      fromBinary(StreamTaskUpdatesResponseSchema, update.body),
    ) as Record<string, unknown>;
    // A StreamResponse holds the event only; the seq travels in a header.
    delete json.seq;
    delete json.generation;
    return JSON.stringify(json);
  }

  /** Records a 2xx answer; false when the worker no longer held the delivery. */
  async delivered(row: A2aPushDeliveryRow, workerId: string, status: number): Promise<boolean> {
    const done = await this.#uow.run(row.tenantId, async (tx) => {
      const settled = await tx.sql.first(deliveredDelivery, row.tenantId, row.id, workerId, status);
      // The config's next delivery may go now.
      if (settled !== undefined) {
        tx.publish({ channel: PUSH_DELIVERY_CHANNEL, tenant: row.tenantId, key: row.taskId, seq: row.seq });
      }
      return settled;
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
      if (settled?.delivery.state === "dead") {
        tx.publish({ channel: PUSH_DELIVERY_CHANNEL, tenant: row.tenantId, key: row.taskId, seq: row.seq });
      }
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
