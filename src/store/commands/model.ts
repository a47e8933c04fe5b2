/** The command aggregate's domain types. */

export type CommandType = "turn" | "steer" | "cancel" | "custom";
export type CommandState = "pending" | "acknowledged" | "completed" | "failed" | "cancelled";

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
