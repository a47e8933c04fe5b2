import { defineEntity, type InferEntity, p } from "@mikro-orm/core";

/**
 * Schema of the run aggregate. Every table leads with tenant_id so that each primary key and
 * index is scoped by tenant: no query can reach a row without naming its tenant.
 *
 * Timestamps are millisecond precision on purpose: keyset page tokens carry them through JS Dates,
 * and a microsecond column would make "(created_at, id) < token" skip or repeat rows.
 */
export const RunEntity = defineEntity({
  name: "Run",
  tableName: "runs",
  properties: {
    tenantId: p.text().primary(),
    id: p.uuid().primary(),
    requestId: p.text().nullable(),
    requestHash: p.text().nullable(),
    threadId: p.text().nullable(),
    sessionId: p.text().nullable(),
    assistantId: p.text().nullable(),
    userId: p.text().nullable(),
    project: p.text().nullable(),
    modelName: p.text().nullable(),
    backendProfile: p.text().nullable(),
    metadata: p.json<Record<string, unknown>>(),
    input: p.json<Record<string, unknown>>(),
    multitaskStrategy: p.text(),
    status: p
      .text()
      .check("status in ('pending','claimed','running','completed','failed','blocked','cancelled')"),
    failureKind: p.text().nullable(),
    failureMessage: p.text().nullable(),
    runnerId: p.text().nullable(),
    leaseExpiresAt: p.datetime(3).nullable(),
    inputTokens: p.bigint("number").default(0),
    outputTokens: p.bigint("number").default(0),
    totalTokens: p.bigint("number").default(0),
    llmCallCount: p.bigint("number").default(0),
    leadAgentTokens: p.bigint("number").default(0),
    subagentTokens: p.bigint("number").default(0),
    middlewareTokens: p.bigint("number").default(0),
    messageCount: p.bigint("number").default(0),
    firstHumanMessage: p.text().nullable(),
    lastAiMessage: p.text().nullable(),
    lastSeq: p.bigint("number").default(0),
    createdAt: p.datetime(3).defaultRaw("current_timestamp(3)"),
    updatedAt: p.datetime(3).defaultRaw("current_timestamp(3)"),
    startedAt: p.datetime(3).nullable(),
    finishedAt: p.datetime(3).nullable(),
  },
  uniques: [{ name: "runs_request_id_unique", properties: ["tenantId", "requestId"] }],
  indexes: [
    { name: "runs_created_idx", properties: ["tenantId", "createdAt", "id"] },
    { name: "runs_thread_idx", properties: ["tenantId", "threadId", "createdAt"] },
    { name: "runs_session_idx", properties: ["tenantId", "sessionId", "createdAt"] },
    { name: "runs_user_idx", properties: ["tenantId", "userId", "createdAt"] },
    {
      name: "runs_inflight_idx",
      expression:
        "create index runs_inflight_idx on runs (tenant_id, created_at, id) where status in ('pending','claimed','running')",
    },
  ],
});
export type RunRow = InferEntity<typeof RunEntity>;

/** The append-only event log; seq is gapless per run (allocated from runs.last_seq under its row lock). */
export const RunEventEntity = defineEntity({
  name: "RunEvent",
  tableName: "run_events",
  properties: {
    tenantId: p.text().primary(),
    runId: p.uuid().primary(),
    seq: p.bigint("number").primary(),
    type: p.text(),
    payload: p.json<Record<string, unknown>>(),
    createdAt: p.datetime(3).defaultRaw("current_timestamp(3)"),
  },
});
export type RunEventRow = InferEntity<typeof RunEventEntity>;

/** Remembers which seqs an idempotent AppendRunEvents (request_id) got, so a retry returns them. */
export const RunEventBatchEntity = defineEntity({
  name: "RunEventBatch",
  tableName: "run_event_batches",
  properties: {
    tenantId: p.text().primary(),
    runId: p.uuid().primary(),
    requestId: p.text().primary(),
    requestHash: p.text(),
    firstSeq: p.bigint("number"),
    lastSeq: p.bigint("number"),
    createdAt: p.datetime(3).defaultRaw("current_timestamp(3)"),
  },
});

export const entities = [RunEntity, RunEventEntity, RunEventBatchEntity];
