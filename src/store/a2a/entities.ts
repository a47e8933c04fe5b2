import { defineEntity, type InferEntity, p } from "@mikro-orm/core";

/**
 * A2A tasks of a tenant. The task itself (the spec's fields: status, artifacts, history, metadata)
 * is kept as its protobuf encoding in `body`, written and read whole; the columns beside it are
 * what lists filter and order by, and what the store manages (generation, update_seq, expiry).
 * A row with generation 0 is a save's placeholder inside its own transaction, never committed.
 */
export const A2aTaskEntity = defineEntity({
  name: "A2aTask",
  tableName: "a2a_tasks",
  properties: {
    tenantId: p.text().primary(),
    id: p.text().primary(),
    contextId: p.text().default(""),
    /** TaskState number of status.state. */
    state: p.smallint().default(0),
    /** status.timestamp, for ListTasks' status_timestamp_after. */
    statusTime: p.datetime(3).nullable(),
    body: p.blob(),
    generation: p.bigint("number"),
    updateSeq: p.bigint("number"),
    /** Each write moves expires_at to its time + ttl_ms; null: the task never expires. */
    ttlMs: p.bigint("number").nullable(),
    expiresAt: p.datetime(3).nullable(),
    createdAt: p.datetime(3).defaultRaw("current_timestamp(3)"),
    updatedAt: p.datetime(3).defaultRaw("current_timestamp(3)"),
  },
  indexes: [
    // ListTasks and ListRecentTasks: most recently updated first, by (updated_at, id).
    { name: "a2a_tasks_updated_idx", properties: ["tenantId", "updatedAt", "id"] },
    { name: "a2a_tasks_context_idx", properties: ["tenantId", "contextId", "updatedAt", "id"] },
    {
      name: "a2a_tasks_expiry_idx",
      expression: "create index a2a_tasks_expiry_idx on a2a_tasks (expires_at) where expires_at is not null",
    },
  ],
});
export type A2aTaskRow = InferEntity<typeof A2aTaskEntity>;

/**
 * A task's update log: one entry per SaveTask (a snapshot) and per update of PublishTaskUpdate, by
 * a gapless per-task seq. `body` is the encoded StreamTaskUpdatesResponse the entry streams as.
 */
export const A2aTaskUpdateEntity = defineEntity({
  name: "A2aTaskUpdate",
  tableName: "a2a_task_updates",
  properties: {
    tenantId: p.text().primary(),
    taskId: p.text().primary(),
    seq: p.bigint("number").primary(),
    /** The task is terminal after this entry: a stream ends with it. */
    terminal: p.boolean().default(false),
    /** On the first entry of a PublishTaskUpdate with a request_id: the id, its updates' hash and last seq. */
    requestId: p.text().nullable(),
    requestHash: p.text().nullable(),
    requestLastSeq: p.bigint("number").nullable(),
    body: p.blob(),
    createdAt: p.datetime(3).defaultRaw("current_timestamp(3)"),
  },
  indexes: [
    {
      name: "a2a_task_updates_request_unique",
      expression:
        "create unique index a2a_task_updates_request_unique on a2a_task_updates (tenant_id, task_id, request_id) where request_id is not null",
    },
  ],
});

/** The conversation of an A2A context: its messages live in a2a_conversation_messages. */
export const A2aConversationEntity = defineEntity({
  name: "A2aConversation",
  tableName: "a2a_conversations",
  properties: {
    tenantId: p.text().primary(),
    contextId: p.text().primary(),
    messageCount: p.bigint("number"),
    /** Position of the newest message; positions only grow, trimming removes the oldest. */
    lastPosition: p.bigint("number"),
    createdAt: p.datetime(3).defaultRaw("current_timestamp(3)"),
    lastAccessAt: p.datetime(3).defaultRaw("current_timestamp(3)"),
    /** last_access_at + the idle TTL; null when conversations do not expire. */
    expiresAt: p.datetime(3).nullable(),
  },
  indexes: [
    {
      name: "a2a_conversations_expiry_idx",
      expression:
        "create index a2a_conversations_expiry_idx on a2a_conversations (expires_at) where expires_at is not null",
    },
  ],
});
export type A2aConversationRow = InferEntity<typeof A2aConversationEntity>;

export const A2aConversationMessageEntity = defineEntity({
  name: "A2aConversationMessage",
  tableName: "a2a_conversation_messages",
  properties: {
    tenantId: p.text().primary(),
    contextId: p.text().primary(),
    position: p.bigint("number").primary(),
    messageId: p.text(),
    /** stableHash of the message's JSON: a repeat with the same id and content is no new message. */
    contentHash: p.text(),
    body: p.blob(),
    createdAt: p.datetime(3).defaultRaw("current_timestamp(3)"),
  },
  uniques: [
    { name: "a2a_conversation_messages_id_unique", properties: ["tenantId", "contextId", "messageId"] },
  ],
});
export type A2aConversationMessageRow = InferEntity<typeof A2aConversationMessageEntity>;

/**
 * Push-notification configs of a task (A2A's TaskPushNotificationConfig), deleted with the task.
 * `token` and `credentials` are sealed (core/secrets.ts: `v1:<keyId>:...` AES-256-GCM, or
 * `plain:...` when no key is configured); `key_id` is the key both are under ('' for plain), for
 * re-encryption after a key rotation.
 */
export const A2aPushConfigEntity = defineEntity({
  name: "A2aPushConfig",
  tableName: "a2a_push_configs",
  properties: {
    tenantId: p.text().primary(),
    taskId: p.text().primary(),
    id: p.text().primary(),
    url: p.text(),
    token: p.text().nullable(),
    /** authentication.scheme; null: no authentication. */
    scheme: p.text().nullable(),
    credentials: p.text().nullable(),
    keyId: p.text().default(""),
    createdAt: p.datetime(3).defaultRaw("current_timestamp(3)"),
  },
});
export type A2aPushConfigRow = InferEntity<typeof A2aPushConfigEntity>;

/**
 * One update of a task to one of its push configs (push_delivery.proto's PushDelivery), written in
 * the update's transaction while push delivery is enabled, deleted with its config and its task.
 * States: pending, sending (worker_id holds it until lease_expires_at), delivered, dead.
 */
export const A2aPushDeliveryEntity = defineEntity({
  name: "A2aPushDelivery",
  tableName: "a2a_push_deliveries",
  properties: {
    tenantId: p.text().primary(),
    id: p.uuid().primary(),
    taskId: p.text(),
    configId: p.text(),
    seq: p.bigint("number"),
    state: p.text(),
    attempts: p.integer().default(0),
    maxAttempts: p.integer(),
    lastError: p.text().nullable(),
    lastStatusCode: p.integer().nullable(),
    /**
     * When a PENDING delivery may be taken; null while an earlier delivery of its config is not
     * finished (the one that finishes it sets the next one's time), so that claims never read
     * past a config's queued deliveries.
     */
    nextAttemptAt: p.datetime(3).nullable(),
    workerId: p.text().nullable(),
    leaseExpiresAt: p.datetime(3).nullable(),
    createdAt: p.datetime(3).defaultRaw("current_timestamp(3)"),
    deliveredAt: p.datetime(3).nullable(),
    updatedAt: p.datetime(3).defaultRaw("current_timestamp(3)"),
  },
  uniques: [
    { name: "a2a_push_deliveries_seq_unique", properties: ["tenantId", "taskId", "configId", "seq"] },
  ],
  indexes: [
    {
      // The workers' look for due deliveries, across tenants.
      name: "a2a_push_deliveries_due_idx",
      expression:
        "create index a2a_push_deliveries_due_idx on a2a_push_deliveries (next_attempt_at) where state = 'pending'",
    },
    {
      // The retention sweep of DELIVERED rows.
      name: "a2a_push_deliveries_delivered_idx",
      expression:
        "create index a2a_push_deliveries_delivered_idx on a2a_push_deliveries (delivered_at) where state = 'delivered'",
    },
    {
      // Deliveries whose sender died: their lease runs out.
      name: "a2a_push_deliveries_lease_idx",
      expression:
        "create index a2a_push_deliveries_lease_idx on a2a_push_deliveries (lease_expires_at) where state = 'sending'",
    },
  ],
});
export type A2aPushDeliveryRow = InferEntity<typeof A2aPushDeliveryEntity>;

export const a2aEntities = [
  A2aTaskEntity,
  A2aTaskUpdateEntity,
  A2aConversationEntity,
  A2aConversationMessageEntity,
  A2aPushConfigEntity,
  A2aPushDeliveryEntity,
];
