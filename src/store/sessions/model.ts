/** The session aggregate's domain types: what stores take and return, free of protobuf and SQL. */

/** The name of the version stream that WatchSessions follows. */
export const SESSIONS_STREAM = "sessions";

export type ExecutionState = "idle" | "running" | "terminal";
export type Attention = "active" | "unread" | "read";
export type SessionListFilter = "default" | "running" | "unread" | "terminal" | "idle" | "all";

/** Event types a user reads (ListSessionEvents with output_only), as agentrun-mgr's output view. */
export const OUTPUT_EVENT_TYPES = ["assistant_message", "command_output", "diff", "error", "terminal_status"];

/** Longest title taken from a turn's prompt. */
export const PROMPT_TITLE_CHARS = 120;

export interface Session {
  id: string;
  backendProfile: string | null;
  project: string | null;
  threadId: string | null;
  title: string | null;
  summary: Record<string, unknown>;
  metadata: Record<string, unknown>;
  version: number;
  executionState: ExecutionState;
  activeRunId: string | null;
  lastRunId: string | null;
  activeCommandId: string | null;
  lastCommandId: string | null;
  lastEventSeq: number;
  terminalStatus: string | null;
  failureKind: string | null;
  lastActivityAt: Date;
  expiresAt: Date | null;
  createdAt: Date;
  updatedAt: Date;
  /** Whether the session was deleted (WatchSessions only; every other read skips it). */
  deleted: boolean;
  /** The reader's cursor (0 without a reader or before the first mark). */
  readVersion: number;
  /** Active, else unread when changed since the reader's cursor, else read. */
  attention: Attention;
  pendingInterrupts: number;
}

export interface SessionUpdate {
  title?: string;
  summary?: Record<string, unknown>;
  metadata?: Record<string, unknown>;
  /** null clears the expiry. */
  expiresAt?: Date | null;
}

export interface Binding {
  identity: string;
  contextId: string;
  sessionId: string;
  createdAt: Date;
  updatedAt: Date;
}

export interface Claim {
  identity: string;
  contextId: string;
  claimant: string;
  expiresAt: Date;
  createdAt: Date;
}

export type InterruptState = "pending" | "resolved";

export interface NewInterrupt {
  id: string;
  sessionId: string;
  runId: string | null;
  kind: string;
  payload: Record<string, unknown>;
  expiresAt: Date | null;
  /** Instead of expiresAt: milliseconds from now, by the database's clock. */
  ttlMs: number | null;
}

export interface Interrupt {
  id: string;
  sessionId: string;
  runId: string | null;
  kind: string;
  payload: Record<string, unknown>;
  state: InterruptState;
  answer: Record<string, unknown> | null;
  resolvedBy: string | null;
  expiresAt: Date | null;
  createdAt: Date;
  resolvedAt: Date | null;
}

/** A session's attention for a reader, as agentrun-mgr defines it. */
export function attentionOf(executionState: ExecutionState, version: number, readVersion: number): Attention {
  if (executionState === "running") return "active";
  return readVersion < version ? "unread" : "read";
}

/** A title from a turn's prompt: whitespace collapsed, trimmed, cut. */
export function titleFromPrompt(prompt: unknown): string | null {
  if (typeof prompt !== "string") return null;
  const title = prompt.trim().replace(/\s+/gu, " ").slice(0, PROMPT_TITLE_CHARS);
  return title === "" ? null : title;
}

/** A title from run metadata's "title". */
export function titleFromMetadata(metadata: Record<string, unknown>): string | null {
  const title = metadata.title;
  if (typeof title !== "string") return null;
  const trimmed = title.trim().slice(0, 200);
  return trimmed === "" ? null : trimmed;
}
