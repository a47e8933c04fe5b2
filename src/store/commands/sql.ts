import { col } from "../../db/rows.ts";
import { statement } from "../../db/sql.ts";
import { CommandEntity } from "./entities.ts";

/**
 * The command aggregate's SQL: seq reservation under the run's row lock, ON CONFLICT for
 * idempotency keys, and conditional state moves that must see and change a row in one step.
 */

/**
 * Reserves the run's next command seq and the seq of the event that announces it, under the run's
 * row lock; no row for a missing or terminal run.
 */
export const reserveCommandSeq = statement<[tenant: string, runId: string]>()({
  name: "commands.reserve_seq",
  text: `update runs set last_command_seq = last_command_seq + 1, last_seq = last_seq + 1, updated_at = clock_timestamp()
         where tenant_id = $1 and id = $2 and status in ('pending', 'claimed', 'running')
         returning last_command_seq, last_seq, updated_at, session_id`,
  row: {
    commandSeq: col.safeInt("last_command_seq"),
    eventSeq: col.safeInt("last_seq"),
    at: col.timestamp("updated_at"),
    sessionId: col.textOrNull("session_id"),
  },
});

type InsertCommandParams = [
  tenant: string,
  id: string,
  runId: string,
  seq: number,
  type: string,
  customType: string | null,
  payloadJson: string,
  idempotencyKey: string | null,
  payloadHash: string,
  eventSeq: number,
  at: Date,
];

/** No row back when the run's idempotency key was taken first (a concurrent create). */
export const insertCommand = statement<InsertCommandParams>()({
  name: "commands.insert",
  text: `insert into commands (tenant_id, id, run_id, seq, type, custom_type, payload, idempotency_key, payload_hash,
           state, event_seq, created_at, updated_at)
         values ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9, 'pending', $10, $11, $11)
         on conflict (tenant_id, run_id, idempotency_key) do nothing
         returning *`,
  row: { command: col.entity(CommandEntity) },
});

/** The announcing event, at the seq reserved with the command. */
export const insertCommandEvent = statement<
  [tenant: string, runId: string, seq: number, payloadJson: string, at: Date]
>()({
  name: "commands.insert_event",
  text: `insert into run_events (tenant_id, run_id, seq, type, payload, created_at)
         values ($1, $2, $3, 'agentstore.command', $4::jsonb, $5)`,
  row: {},
});

/** PENDING -> ACKNOWLEDGED; no row when the command is in any other state. */
export const ackCommand = statement<[tenant: string, id: string]>()({
  name: "commands.ack",
  text: `update commands set state = 'acknowledged', acked_at = clock_timestamp(), updated_at = clock_timestamp()
         where tenant_id = $1 and id = $2 and state = 'pending'
         returning *`,
  row: { command: col.entity(CommandEntity) },
});

/** An open command to a terminal state; no row when it has ended already (the first end wins). */
export const endCommand = statement<
  [
    tenant: string,
    id: string,
    state: string,
    resultJson: string | null,
    failureKind: string | null,
    failureMessage: string | null,
  ]
>()({
  name: "commands.end",
  text: `update commands set state = $3, result = coalesce($4::jsonb, result), failure_kind = $5, failure_message = $6,
           finished_at = clock_timestamp(), updated_at = clock_timestamp()
         where tenant_id = $1 and id = $2 and state in ('pending', 'acknowledged')
         returning *`,
  row: { command: col.entity(CommandEntity) },
});

/** Every open command of a run, cancelled because the run ended. */
export const cancelOpenCommands = statement<
  [tenant: string, runId: string, failureKind: string, message: string]
>()({
  name: "commands.cancel_open",
  text: `update commands set state = 'cancelled', failure_kind = $3, failure_message = $4,
           finished_at = clock_timestamp(), updated_at = clock_timestamp()
         where tenant_id = $1 and run_id = $2 and state in ('pending', 'acknowledged')
         returning id`,
  row: { id: col.text("id") },
});

/** Whether the command's run is active, locked so that a status event can follow in its log. */
export const lockActiveRun = statement<[tenant: string, runId: string]>()({
  name: "commands.lock_active_run",
  text: `select id, session_id from runs where tenant_id = $1 and id = $2 and status in ('pending', 'claimed', 'running') for update`,
  row: { id: col.text("id"), sessionId: col.textOrNull("session_id") },
});
