import { DomainError } from "../../core/errors.ts";

/** The command aggregate's domain types. */

export type CommandType = "turn" | "steer" | "cancel" | "custom";
export type CommandState = "pending" | "acknowledged" | "completed" | "failed" | "cancelled";

/**
 * Notice (db/unit-of-work.ts) of a command created or moved, keyed by its run id; only for runs
 * that belong to a session, the one thing that follows commands.
 */
export const COMMANDS_CHANGED = "commands.changed";

export const OPEN_COMMAND_STATES = ["pending", "acknowledged"] as const;
export const isCommandTerminal = (state: string) =>
  state === "completed" || state === "failed" || state === "cancelled";

export interface NewCommand {
  type: CommandType;
  customType: string | null;
  payload: Record<string, unknown>;
  idempotencyKey: string | null;
}

export interface Command {
  id: string;
  runId: string;
  seq: number;
  type: CommandType;
  customType: string | null;
  payload: Record<string, unknown>;
  idempotencyKey: string | null;
  state: CommandState;
  result: Record<string, unknown> | null;
  failureKind: string | null;
  failureMessage: string | null;
  eventSeq: number;
  createdAt: Date;
  ackedAt: Date | null;
  finishedAt: Date | null;
  updatedAt: Date;
}

export interface CommandOutcome {
  state: "completed" | "failed";
  result: Record<string, unknown> | null;
  failureKind: string | null;
  failureMessage: string | null;
}

/** A runner's result (of a command, of a job) is held to the size of an event payload. */
export function checkResultSize(resultJson: string, maxBytes: number): void {
  const bytes = Buffer.byteLength(resultJson);
  if (bytes > maxBytes) {
    throw new DomainError(
      "RESOURCE_EXHAUSTED",
      "PAYLOAD_TOO_LARGE",
      `the result takes ${bytes} bytes, more than the limit of ${maxBytes}`,
      { bytes: String(bytes), limit: String(maxBytes) },
    );
  }
}
