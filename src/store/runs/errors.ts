import { DomainError } from "../../core/errors.ts";

export const runNotFound = (runId: string) =>
  new DomainError("NOT_FOUND", "RUN_NOT_FOUND", `run ${runId} was not found`, { run_id: runId });

export const runIsTerminal = (run: { id: string; status: string }) =>
  new DomainError("FAILED_PRECONDITION", "RUN_TERMINAL", `run ${run.id} is already ${run.status}`, {
    run_id: run.id,
    status: run.status,
  });

export const requestIdReused = (requestId: string) =>
  new DomainError(
    "ALREADY_EXISTS",
    "REQUEST_ID_REUSED",
    `request_id ${requestId} was already used with a different request; use a new request_id for a new request`,
    { request_id: requestId },
  );

export const runnerNotFound = (runnerId: string) =>
  new DomainError(
    "NOT_FOUND",
    "RUNNER_NOT_FOUND",
    `runner ${runnerId} is not registered; call RunnerService.RegisterRunner first`,
    { runner_id: runnerId },
  );

export const runLeased = (runId: string, holder: string, expiresAt: Date | null) =>
  new DomainError(
    "ABORTED",
    "RUN_LEASED",
    `run ${runId} is held by runner ${holder} until ${expiresAt?.toISOString() ?? "further notice"}`,
    { run_id: runId, runner_id: holder, lease_expire_time: expiresAt?.toISOString() ?? "" },
  );

export const notLeaseHolder = (runId: string, runnerId: string, holder: string | null) =>
  new DomainError(
    "FAILED_PRECONDITION",
    "NOT_LEASE_HOLDER",
    holder === null
      ? `runner ${runnerId} does not hold run ${runId}: nobody does (it was released, requeued or has ended)`
      : `runner ${runnerId} does not hold run ${runId}: runner ${holder} does`,
    { run_id: runId, runner_id: runnerId, holder_runner_id: holder ?? "" },
  );

export const runQueued = (runId: string, aheadRunId: string) =>
  new DomainError(
    "FAILED_PRECONDITION",
    "RUN_QUEUED",
    `run ${runId} waits behind run ${aheadRunId} of its thread (ENQUEUE); claim it when that one has ended`,
    { run_id: runId, ahead_run_id: aheadRunId },
  );
