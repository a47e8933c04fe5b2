/** The runner aggregate's domain types. */

export interface Runner {
  id: string;
  labels: Record<string, string>;
  capabilities: string[];
  version: string | null;
  backendProfile: string | null;
  registeredAt: Date;
  heartbeatAt: Date;
  /** Whether the last heartbeat is within the staleness window asked for. */
  live: boolean;
  /** Runs it holds a lease on now. */
  heldRuns: number;
}

export interface RunnerRegistration {
  /** Chosen by the runner, or null to have one assigned. */
  id: string | null;
  labels: Record<string, string>;
  capabilities: string[];
  version: string | null;
  backendProfile: string | null;
}

export interface RunnerFilter {
  state?: "live" | "stale";
  staleAfterMs: number;
  labels: Record<string, string>;
}

export interface NewRunnerJob {
  runId: string;
  commandId: string | null;
  runnerId: string;
  attemptId: string | null;
  namespace: string | null;
  jobName: string | null;
  managerUrl: string | null;
  image: string | null;
  sourceCommit: string | null;
  serviceAccount: string | null;
  result: Record<string, unknown>;
}

export interface RunnerJob extends NewRunnerJob {
  id: string;
  idempotencyKey: string | null;
  createdAt: Date;
}

/** A runner is stale when silent for longer than this, unless a caller asks otherwise. */
export const DEFAULT_STALE_AFTER_MS = 30_000;
