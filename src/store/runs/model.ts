/** The run aggregate's domain types: what stores take and return, free of protobuf and SQL. */

export const ACTIVE_STATUSES = ["pending", "claimed", "running"] as const;
export const TERMINAL_STATUSES = ["completed", "failed", "blocked", "cancelled"] as const;
export type ActiveStatus = (typeof ACTIVE_STATUSES)[number];
export type TerminalStatus = (typeof TERMINAL_STATUSES)[number];
export type RunStatus = ActiveStatus | TerminalStatus;

export const isTerminal = (status: string): status is TerminalStatus =>
  (TERMINAL_STATUSES as readonly string[]).includes(status);

export type MultitaskStrategy = "reject" | "enqueue" | "interrupt";

/** What lease recovery does with a run whose runner went silent. */
export type LeaseLostPolicy = "fail" | "requeue";

/** Feed channel told whenever a run becomes PENDING (created, released, requeued): ClaimNextRun waits on it. */
export const PENDING_RUNS_CHANNEL = "runs.pending";

/**
 * Notices (db/unit-of-work.ts) for the sessions a run belongs to; runs without a session give
 * none. A run created in a session, keyed by the run's id; a run of a session that ended or was
 * deleted, keyed by the session's id. Claims, progress and releases keep a run active and change
 * nothing a session shows, so they give none.
 */
export const RUN_CREATED_IN_SESSION = "runs.created_in_session";
export const SESSION_RUN_CHANGED = "runs.session_run_changed";

/** The name of the version stream that WatchRuns follows. */
export const RUNS_STREAM = "runs";

export interface NewRun {
  threadId: string | null;
  sessionId: string | null;
  assistantId: string | null;
  userId: string | null;
  project: string | null;
  modelName: string | null;
  backendProfile: string | null;
  metadata: Record<string, unknown>;
  input: Record<string, unknown>;
  multitaskStrategy: MultitaskStrategy;
  labels: Record<string, string>;
  leaseLostPolicy: LeaseLostPolicy;
}

/** Token counters, exact int64 end to end: a client's 9007199254740993 comes back as sent. */
export interface TokenUsage {
  inputTokens: bigint;
  outputTokens: bigint;
  totalTokens: bigint;
  llmCallCount: bigint;
  leadAgentTokens: bigint;
  subagentTokens: bigint;
  middlewareTokens: bigint;
}

export const TOKEN_USAGE_FIELDS = [
  "inputTokens",
  "outputTokens",
  "totalTokens",
  "llmCallCount",
  "leadAgentTokens",
  "subagentTokens",
  "middlewareTokens",
] as const satisfies ReadonlyArray<keyof TokenUsage>;

export const zeroUsage = (): TokenUsage => ({
  inputTokens: 0n,
  outputTokens: 0n,
  totalTokens: 0n,
  llmCallCount: 0n,
  leadAgentTokens: 0n,
  subagentTokens: 0n,
  middlewareTokens: 0n,
});

/** A progress or completion snapshot; undefined fields keep their stored value. */
export interface RunSnapshot {
  usage?: TokenUsage;
  messageCount?: bigint;
  firstHumanMessage?: string;
  lastAiMessage?: string;
  modelName?: string;
}

export interface RunOutcome extends RunSnapshot {
  status: TerminalStatus;
  failureKind: string | null;
  failureMessage: string | null;
}

export interface RunFilter {
  threadId?: string;
  sessionId?: string;
  userId?: string;
  status?: RunStatus;
}

/** What WatchRuns can filter on: fields a run never changes, so a run never leaves a filter. */
export interface RunWatchFilter {
  threadId?: string;
  sessionId?: string;
  userId?: string;
  assistantId?: string;
  project?: string;
}

/** A stored run, as every read returns it. */
export interface Run {
  tenantId: string;
  id: string;
  requestId: string | null;
  requestHash: string | null;
  threadId: string | null;
  sessionId: string | null;
  assistantId: string | null;
  userId: string | null;
  project: string | null;
  modelName: string | null;
  backendProfile: string | null;
  metadata: Record<string, unknown>;
  input: Record<string, unknown>;
  multitaskStrategy: MultitaskStrategy;
  labels: Record<string, string>;
  leaseLostPolicy: LeaseLostPolicy;
  status: RunStatus;
  failureKind: string | null;
  failureMessage: string | null;
  runnerId: string | null;
  leaseExpiresAt: Date | null;
  usage: TokenUsage;
  messageCount: bigint;
  firstHumanMessage: string | null;
  lastAiMessage: string | null;
  lastSeq: number;
  lastCommandSeq: number;
  version: number;
  createdAt: Date;
  updatedAt: Date;
  startedAt: Date | null;
  finishedAt: Date | null;
}

export interface ThreadUsage {
  totalRuns: bigint;
  usage: TokenUsage;
  byModel: Map<string, { runs: bigint; inputTokens: bigint; outputTokens: bigint; totalTokens: bigint }>;
}
