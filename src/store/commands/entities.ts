import { defineEntity, type InferEntity, p } from "@mikro-orm/core";

/**
 * Commands to the runner of a run. seq is gapless per run, taken from runs.last_command_seq under
 * the run's row lock in the transaction that inserts the command.
 */
export const CommandEntity = defineEntity({
  name: "Command",
  tableName: "commands",
  properties: {
    tenantId: p.text().primary(),
    id: p.uuid().primary(),
    runId: p.uuid(),
    seq: p.bigint("number"),
    type: p.text().check("type in ('turn','steer','cancel','custom')"),
    customType: p.text().nullable(),
    payload: p.json<Record<string, unknown>>(),
    idempotencyKey: p.text().nullable(),
    payloadHash: p.text(),
    state: p.text().check("state in ('pending','acknowledged','completed','failed','cancelled')"),
    result: p.json<Record<string, unknown>>().nullable(),
    failureKind: p.text().nullable(),
    failureMessage: p.text().nullable(),
    /** The seq of the run event that announced the command (StreamCommands resumes from it). */
    eventSeq: p.bigint("number"),
    createdAt: p.datetime(3).defaultRaw("current_timestamp(3)"),
    ackedAt: p.datetime(3).nullable(),
    finishedAt: p.datetime(3).nullable(),
    updatedAt: p.datetime(3).defaultRaw("current_timestamp(3)"),
  },
  uniques: [
    { name: "commands_seq_unique", properties: ["tenantId", "runId", "seq"] },
    { name: "commands_idempotency_unique", properties: ["tenantId", "runId", "idempotencyKey"] },
  ],
});
export type CommandRow = InferEntity<typeof CommandEntity>;

export const commandEntities = [CommandEntity];
