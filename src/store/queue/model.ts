import { DomainError } from "../../core/errors.ts";

/** The queue aggregate's domain types. */

export const QUEUE_TASK_STATES = [
  "pending",
  "claimed",
  "running",
  "completed",
  "failed",
  "blocked",
  "cancelled",
  "dead",
] as const;
export type QueueTaskState = (typeof QUEUE_TASK_STATES)[number];

export const HELD_STATES: readonly QueueTaskState[] = ["claimed", "running"];
export const isHeld = (state: QueueTaskState) => state === "claimed" || state === "running";
export const isTerminal = (state: QueueTaskState) => state !== "pending" && !isHeld(state);

/** The tenant's version-ordered stream of queue task changes (WatchTasks, ListQueueTasks). */
export const QUEUE_STREAM = "queue_tasks";
/** Feed channel that wakes waiting ClaimTasks: key = the queue whose tasks became claimable. */
export const QUEUE_DUE_CHANNEL = "queue.due";

export const DEFAULT_MAX_ATTEMPTS = 5;
export const DEFAULT_BACKOFF_INITIAL_MS = 1_000;
export const DEFAULT_BACKOFF_MAX_MS = 3_600_000;
export const DEFAULT_LEASE_MS = 30_000;
/** Errors are kept for the caller to read, not as a log: a stored error is cut to this. */
export const MAX_ERROR_CHARS = 8192;

export interface Backoff {
  initialMs: number;
  maxMs: number;
}

export interface AttemptRef {
  attemptId: string | null;
  runId: string | null;
  sessionId: string | null;
  metadata: Record<string, unknown>;
}

export interface NewTask {
  queue: string;
  lane: string;
  priority: number;
  payload: Record<string, unknown>;
  idempotencyKey: string | null;
  replace: boolean;
  /** null for now. */
  runAt: Date | null;
  maxAttempts: number;
  backoff: Backoff;
  timeoutMs: number | null;
  serial: boolean;
  /** Set for tasks a schedule enqueued. */
  scheduleId: string | null;
}

export interface QueueTask {
  id: string;
  queue: string;
  lane: string;
  priority: number;
  payload: Record<string, unknown>;
  idempotencyKey: string | null;
  state: QueueTaskState;
  serial: boolean;
  runAt: Date;
  attempts: number;
  maxAttempts: number;
  backoff: Backoff;
  timeoutMs: number | null;
  workerId: string | null;
  leaseExpiresAt: Date | null;
  lastError: string | null;
  result: Record<string, unknown> | null;
  latestAttempt: AttemptRef | null;
  sessionPath: string | null;
  cancelReason: string | null;
  scheduleId: string | null;
  version: number;
  /** For the reader named in the request; 0 without one. */
  readVersion: number;
  createdAt: Date;
  updatedAt: Date;
  finishedAt: Date | null;
}

/** A terminal write's outcome: the task after it, and whether this write ended it. */
export interface Ended {
  task: QueueTask;
  changed: boolean;
}

export interface ClaimRequest {
  workerId: string;
  queue: string;
  /** null for any lane. */
  lanes: string[] | null;
  maxTasks: number;
  leaseMs: number;
}

export interface TaskListFilter {
  queue: string | null;
  state: QueueTaskState | null;
  lane: string | null;
  updatedAfterVersion: number;
  readerId: string | null;
}

export interface QueueStats {
  queue: string | null;
  total: number;
  byState: Record<string, number>;
  byLane: Record<string, number>;
  due: number;
  oldestDueAgeMs: number | null;
  maxVersion: number;
  generatedAt: Date;
}

export interface Schedule {
  id: string;
  queue: string;
  cron: string;
  timeZone: string;
  template: NewTask;
  nextRunAt: Date;
  lastRunAt: Date | null;
  createdAt: Date;
}

export const taskNotFound = (taskId: string) =>
  new DomainError("NOT_FOUND", "QUEUE_TASK_NOT_FOUND", `queue task ${taskId} was not found`, {
    task_id: taskId,
  });

export const notTaskHolder = (taskId: string, workerId: string, holder: string | null) =>
  new DomainError(
    "FAILED_PRECONDITION",
    "NOT_TASK_HOLDER",
    holder === null
      ? `worker ${workerId} does not hold queue task ${taskId}: nobody does (its lease may have expired)`
      : `worker ${workerId} does not hold queue task ${taskId}`,
    { task_id: taskId, worker_id: workerId },
  );

export const taskTerminal = (task: { id: string; state: string }) =>
  new DomainError("FAILED_PRECONDITION", "TASK_TERMINAL", `queue task ${task.id} is already ${task.state}`, {
    task_id: task.id,
    state: task.state.toUpperCase(),
  });

export const taskTimedOut = (taskId: string) =>
  new DomainError(
    "FAILED_PRECONDITION",
    "TASK_TIMED_OUT",
    `queue task ${taskId}'s attempt has run past its timeout; its lease cannot be renewed`,
    { task_id: taskId },
  );

export const taskNotPending = (task: { id: string; state: string }, key: string) =>
  new DomainError(
    "FAILED_PRECONDITION",
    "TASK_NOT_PENDING",
    `idempotency_key ${key} names queue task ${task.id}, which is ${task.state}: only a PENDING task can be replaced`,
    { task_id: task.id, idempotency_key: key },
  );

export const idempotencyKeyReused = (key: string, taskId: string) =>
  new DomainError(
    "ALREADY_EXISTS",
    "IDEMPOTENCY_KEY_REUSED",
    `idempotency_key ${key} was already used for queue task ${taskId} with a different payload; use a new key or replace`,
    { idempotency_key: key, task_id: taskId },
  );

export const scheduleNotFound = (scheduleId: string) =>
  new DomainError("NOT_FOUND", "SCHEDULE_NOT_FOUND", `schedule ${scheduleId} was not found`, {
    schedule_id: scheduleId,
  });

export const scheduleExists = (scheduleId: string) =>
  new DomainError("ALREADY_EXISTS", "SCHEDULE_EXISTS", `schedule ${scheduleId} exists already`, {
    schedule_id: scheduleId,
  });
