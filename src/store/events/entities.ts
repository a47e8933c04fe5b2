import { defineEntity, type InferEntity, p } from "@mikro-orm/core";

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

export const eventEntities = [RunEventEntity, RunEventBatchEntity];
