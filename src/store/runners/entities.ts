import { defineEntity, type InferEntity, p } from "@mikro-orm/core";

/** Runners of a tenant. Liveness is the age of heartbeat_at, judged by the database's clock. */
export const RunnerEntity = defineEntity({
  name: "Runner",
  tableName: "runners",
  properties: {
    tenantId: p.text().primary(),
    id: p.text().primary(),
    labels: p.json<Record<string, string>>(),
    capabilities: p.json<string[]>(),
    version: p.text().nullable(),
    backendProfile: p.text().nullable(),
    registeredAt: p.datetime(3).defaultRaw("current_timestamp(3)"),
    heartbeatAt: p.datetime(3).defaultRaw("current_timestamp(3)"),
  },
  indexes: [{ name: "runners_heartbeat_idx", properties: ["tenantId", "heartbeatAt"] }],
});
export type RunnerRow = InferEntity<typeof RunnerEntity>;

/** Jobs runners launched for runs; idempotent by (run, idempotency key). */
export const RunnerJobEntity = defineEntity({
  name: "RunnerJob",
  tableName: "runner_jobs",
  properties: {
    tenantId: p.text().primary(),
    id: p.uuid().primary(),
    runId: p.uuid(),
    commandId: p.uuid().nullable(),
    runnerId: p.text(),
    attemptId: p.text().nullable(),
    namespace: p.text().nullable(),
    jobName: p.text().nullable(),
    managerUrl: p.text().nullable(),
    image: p.text().nullable(),
    sourceCommit: p.text().nullable(),
    serviceAccount: p.text().nullable(),
    result: p.json<Record<string, unknown>>(),
    idempotencyKey: p.text().nullable(),
    payloadHash: p.text(),
    createdAt: p.datetime(3).defaultRaw("current_timestamp(3)"),
  },
  uniques: [{ name: "runner_jobs_idempotency_unique", properties: ["tenantId", "runId", "idempotencyKey"] }],
  indexes: [{ name: "runner_jobs_run_idx", properties: ["tenantId", "runId", "createdAt", "id"] }],
});
export type RunnerJobRow = InferEntity<typeof RunnerJobEntity>;

export const runnerEntities = [RunnerEntity, RunnerJobEntity];
