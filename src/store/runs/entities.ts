import { defineEntity, type InferEntity, p } from "@mikro-orm/core";
import { ACTIVE_STATUSES, TERMINAL_STATUSES } from "./model.ts";

const quoted = (values: readonly string[]) => values.map((v) => `'${v}'`).join(",");

/**
 * The runs table. Every table leads with tenant_id so that each primary key and index is scoped by
 * tenant: no query can reach a row without naming its tenant.
 *
 * Timestamps are millisecond precision on purpose: keyset page tokens carry them through JS Dates,
 * and a microsecond column would make "(created_at, id) < token" skip or repeat rows.
 *
 * Token counters are int8 mapped to JS bigint, so a client's counters come back exactly as sent;
 * seqs and versions are mapped to numbers, since the server itself keeps them far below 2^53.
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
    status: p.text().check(`status in (${quoted([...ACTIVE_STATUSES, ...TERMINAL_STATUSES])})`),
    failureKind: p.text().nullable(),
    failureMessage: p.text().nullable(),
    runnerId: p.text().nullable(),
    leaseExpiresAt: p.datetime(3).nullable(),
    inputTokens: p.bigint("bigint").default(0),
    outputTokens: p.bigint("bigint").default(0),
    totalTokens: p.bigint("bigint").default(0),
    llmCallCount: p.bigint("bigint").default(0),
    leadAgentTokens: p.bigint("bigint").default(0),
    subagentTokens: p.bigint("bigint").default(0),
    middlewareTokens: p.bigint("bigint").default(0),
    messageCount: p.bigint("bigint").default(0),
    firstHumanMessage: p.text().nullable(),
    lastAiMessage: p.text().nullable(),
    lastSeq: p.bigint("number").default(0),
    /** Labels a runner selects runs by (ClaimNextRun). */
    labels: p.json<Record<string, string>>().defaultRaw("'{}'::jsonb"),
    /** "fail" or "requeue": what lease recovery does when the holder goes silent. */
    leaseLostPolicy: p.text().default("fail"),
    /** The request id of the ClaimNextRun that gave the run to its holder, so a retry finds it. */
    claimRequestId: p.text().nullable(),
    /** Commands are numbered per run from this counter, under the run's row lock. */
    lastCommandSeq: p.bigint("number").default(0),
    /** Position in the tenant's "runs" version stream (WatchRuns); bumped by every change. */
    version: p.bigint("number").default(0),
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
    { name: "runs_version_idx", properties: ["tenantId", "version"] },
    {
      // Lease recovery: held runs by lease expiry.
      name: "runs_lease_idx",
      expression:
        "create index runs_lease_idx on runs (lease_expires_at) where runner_id is not null and status in ('claimed','running')",
    },
    {
      // Dispatch: pending runs oldest first.
      name: "runs_pending_idx",
      expression:
        "create index runs_pending_idx on runs (tenant_id, created_at, id) where status = 'pending'",
    },
    {
      name: "runs_inflight_idx",
      expression: `create index runs_inflight_idx on runs (tenant_id, created_at, id) where status in (${quoted(ACTIVE_STATUSES)})`,
    },
  ],
});
export type RunRow = InferEntity<typeof RunEntity>;

export const runEntities = [RunEntity];
