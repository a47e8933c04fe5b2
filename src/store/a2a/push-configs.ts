import { randomUUID } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import {
  type TaskPushNotificationConfig,
  TaskPushNotificationConfigSchema,
} from "../../../gen/agentstore/v1/a2a_task_pb.ts";
import { DomainError } from "../../core/errors.ts";
import { checkOutboundUrl, type Lookup } from "../../core/outbound-url.ts";
import { isStringTuple, type ListSpec, type Page, type PageRequest, type Paging } from "../../core/paging.ts";
import { PLAIN_KEY_ID, type SecretBox } from "../../core/secrets.ts";
import type { Database } from "../../db/database.ts";
import type { Tx, UnitOfWork } from "../../db/unit-of-work.ts";
import {
  A2aPushConfigEntity,
  type A2aPushConfigRow,
  A2aPushDeliveryEntity,
  A2aTaskEntity,
} from "./entities.ts";
import { a2aTaskNotFound } from "./model.ts";
import type { DeliveryConfigRow } from "./push-deliveries.ts";
import { shareTask } from "./sql.ts";
import { live } from "./tasks.ts";

/** By id. */
const PUSH_CONFIG_LIST: ListSpec<string[]> = {
  name: "a2a_push_configs",
  defaultSize: 50,
  maxSize: 100,
  isPosition: isStringTuple(1),
};

/** Configs one task may hold. */
export const MAX_PUSH_CONFIGS_PER_TASK = 100;

const REENCRYPT_BATCH = 200;

export const pushConfigNotFound = (taskId: string, id: string) =>
  new DomainError("NOT_FOUND", "PUSH_CONFIG_NOT_FOUND", `task ${taskId} has no push config ${id}`, {
    task_id: taskId,
    id,
  });

/** A config checked and sealed, ready to be written in a transaction. */
export interface PreparedPushConfig {
  readonly row: Pick<
    A2aPushConfigRow,
    "tenantId" | "taskId" | "id" | "url" | "token" | "scheme" | "credentials" | "keyId" | "createdAt"
  >;
}

export interface PushConfigStoreOptions {
  /** Accept URLs on loopback, private and link-local addresses. */
  allowPrivateUrls: boolean;
  /** The host lookup (tests may replace it). */
  lookup?: Lookup;
}

/** The associated data of a sealed field: the value opens only in its own row and field. */
const aad = (row: { tenantId: string; taskId: string; id: string }, field: "token" | "credentials") =>
  `a2a_push_configs\u0000${row.tenantId}\u0000${row.taskId}\u0000${row.id}\u0000${field}`;

/**
 * Push-notification configs of A2A tasks. Writes hold the task's row in share mode, so a config is
 * never added to a task being deleted or swept (which take the row exclusively and delete its
 * configs with it). Token and credentials are sealed with the SecretBox before they are written.
 */
export class PushConfigStore {
  readonly #db: Database;
  readonly #uow: UnitOfWork;
  readonly #paging: Paging;
  readonly #box: SecretBox;
  readonly #options: PushConfigStoreOptions;

  constructor(
    db: Database,
    uow: UnitOfWork,
    paging: Paging,
    box: SecretBox,
    options: PushConfigStoreOptions,
  ) {
    this.#db = db;
    this.#uow = uow;
    this.#paging = paging;
    this.#box = box;
    this.#options = options;
  }

  /** Creates (or replaces, by id) a config of a live task; assigns the id when empty. */
  async create(tenant: string, input: TaskPushNotificationConfig): Promise<TaskPushNotificationConfig> {
    const prepared = await this.prepare(tenant, input);
    await this.#uow.run(tenant, async (tx) => {
      const task = (await tx.sql.first(shareTask, tenant, input.taskId))?.task;
      if (task === undefined || !live(task, new Date())) throw a2aTaskNotFound(input.taskId);
      await this.insertPrepared(tx, prepared);
    });
    return this.#toProto(prepared.row);
  }

  /**
   * The checks and sealing of a config, done before its transaction (the URL check may look the
   * host up): what `insertPrepared` writes, and what `preparedToProto` answers.
   */
  async prepare(tenant: string, input: TaskPushNotificationConfig): Promise<PreparedPushConfig> {
    await checkOutboundUrl(input.url, {
      allowPrivate: this.#options.allowPrivateUrls,
      lookup: this.#options.lookup,
    });
    const id = input.id === "" ? randomUUID() : input.id;
    const key = { tenantId: tenant, taskId: input.taskId, id };
    return {
      row: {
        ...key,
        url: input.url,
        token: input.token === "" ? null : this.#box.seal(input.token, aad(key, "token")),
        scheme: input.authentication?.scheme ?? null,
        credentials:
          input.authentication === undefined || input.authentication.credentials === ""
            ? null
            : this.#box.seal(input.authentication.credentials, aad(key, "credentials")),
        keyId: this.#box.currentKeyId,
        createdAt: new Date(),
      },
    };
  }

  /** Writes a prepared config, replacing one of its id; the caller holds its task's row lock. */
  async insertPrepared(tx: Tx, prepared: PreparedPushConfig): Promise<void> {
    const { row } = prepared;
    const key = { tenantId: row.tenantId, taskId: row.taskId, id: row.id };
    const replaced = await tx.em.nativeDelete(A2aPushConfigEntity, key);
    if (replaced === 0) {
      const held = await tx.em.count(A2aPushConfigEntity, { tenantId: row.tenantId, taskId: row.taskId });
      if (held >= MAX_PUSH_CONFIGS_PER_TASK) {
        throw new DomainError(
          "RESOURCE_EXHAUSTED",
          "PUSH_CONFIG_LIMIT",
          `task ${row.taskId} holds ${held} push configs, the most a task may hold`,
          { task_id: row.taskId, limit: String(MAX_PUSH_CONFIGS_PER_TASK) },
        );
      }
    }
    await tx.em.insert(A2aPushConfigEntity, row);
  }

  preparedToProto(prepared: PreparedPushConfig): TaskPushNotificationConfig {
    return this.#toProto(prepared.row);
  }

  /** A config; NOT_FOUND for an unknown or expired task, or an unknown config. */
  async get(tenant: string, taskId: string, id: string): Promise<TaskPushNotificationConfig> {
    const em = this.#db.orm.em.fork();
    await this.#requireLiveTask(tenant, taskId);
    const row = await em.findOne(A2aPushConfigEntity, { tenantId: tenant, taskId, id });
    if (row === null) throw pushConfigNotFound(taskId, id);
    return this.#toProto(row);
  }

  /** A page of a task's configs, by id. */
  async list(
    tenant: string,
    taskId: string,
    request: PageRequest,
  ): Promise<Page<TaskPushNotificationConfig>> {
    const page = this.#paging.start(PUSH_CONFIG_LIST, tenant, { taskId }, request);
    await this.#requireLiveTask(tenant, taskId);
    const after = page.after?.[0];
    const rows = await this.#db.orm.em
      .fork()
      .find(
        A2aPushConfigEntity,
        { tenantId: tenant, taskId, ...(after === undefined ? {} : { id: { $gt: after } }) },
        { orderBy: { id: "asc" }, limit: page.limit + 1 },
      );
    const result = page.finish(rows, (row) => [row.id]);
    return { items: result.items.map((row) => this.#toProto(row)), nextPageToken: result.nextPageToken };
  }

  /** Deletes a config; NOT_FOUND for an unknown or expired task, or an unknown config. */
  delete(tenant: string, taskId: string, id: string): Promise<void> {
    return this.#uow.run(tenant, async (tx) => {
      const task = (await tx.sql.first(shareTask, tenant, taskId))?.task;
      if (task === undefined || !live(task, new Date())) throw a2aTaskNotFound(taskId);
      const deleted = await tx.em.nativeDelete(A2aPushConfigEntity, { tenantId: tenant, taskId, id });
      if (deleted === 0) throw pushConfigNotFound(taskId, id);
      await tx.em.nativeDelete(A2aPushDeliveryEntity, { tenantId: tenant, taskId, configId: id });
    });
  }

  /** A config row as a delivery sends to it: token and credentials opened (SecretError if not). */
  open(row: DeliveryConfigRow): TaskPushNotificationConfig {
    return this.#toProto(row);
  }

  async #requireLiveTask(tenant: string, taskId: string): Promise<void> {
    const task = await this.#db.orm.em.fork().findOne(A2aTaskEntity, { tenantId: tenant, id: taskId });
    if (task === null || !live(task, new Date())) throw a2aTaskNotFound(taskId);
  }

  #toProto(
    row: Pick<A2aPushConfigRow, "tenantId" | "taskId" | "id" | "url" | "token" | "scheme" | "credentials">,
  ) {
    return create(TaskPushNotificationConfigSchema, {
      id: row.id,
      taskId: row.taskId,
      url: row.url,
      token:
        row.token === null || row.token === undefined ? "" : this.#box.open(row.token, aad(row, "token")),
      authentication:
        row.scheme === null || row.scheme === undefined
          ? undefined
          : {
              scheme: row.scheme,
              credentials:
                row.credentials === null || row.credentials === undefined
                  ? ""
                  : this.#box.open(row.credentials, aad(row, "credentials")),
            },
    });
  }
}

/**
 * Re-seals every config not under the box's newest key (also plain ones), in batches by primary
 * key. Each row is rewritten only if it is still as read (a config replaced meanwhile is under the
 * newest key already). Rows that do not open (a key no longer configured) are counted as failed
 * and left as they are.
 */
export async function reencryptPushConfigs(
  db: Database,
  box: SecretBox,
): Promise<{ reencrypted: number; failed: number }> {
  const target = box.currentKeyId;
  if (target === PLAIN_KEY_ID) throw new Error("no push-config key is configured to re-encrypt under");
  let reencrypted = 0;
  let failed = 0;
  let cursor: { tenantId: string; taskId: string; id: string } | undefined;
  for (;;) {
    const em = db.orm.em.fork();
    const after =
      cursor === undefined
        ? {}
        : {
            $or: [
              { tenantId: { $gt: cursor.tenantId } },
              { tenantId: cursor.tenantId, taskId: { $gt: cursor.taskId } },
              { tenantId: cursor.tenantId, taskId: cursor.taskId, id: { $gt: cursor.id } },
            ],
          };
    const rows = await em.find(
      A2aPushConfigEntity,
      { keyId: { $ne: target }, ...after },
      { orderBy: { tenantId: "asc", taskId: "asc", id: "asc" }, limit: REENCRYPT_BATCH },
    );
    for (const row of rows) {
      let token: string | null;
      let credentials: string | null;
      try {
        token =
          row.token == null ? null : box.seal(box.open(row.token, aad(row, "token")), aad(row, "token"));
        credentials =
          row.credentials == null
            ? null
            : box.seal(box.open(row.credentials, aad(row, "credentials")), aad(row, "credentials"));
      } catch {
        failed++;
        continue;
      }
      const updated = await em.nativeUpdate(
        A2aPushConfigEntity,
        {
          tenantId: row.tenantId,
          taskId: row.taskId,
          id: row.id,
          keyId: row.keyId,
          token: row.token ?? null,
          credentials: row.credentials ?? null,
        },
        { token, credentials, keyId: target },
      );
      reencrypted += updated;
    }
    const last = rows.at(-1);
    if (last === undefined || rows.length < REENCRYPT_BATCH) return { reencrypted, failed };
    cursor = { tenantId: last.tenantId, taskId: last.taskId, id: last.id };
  }
}
