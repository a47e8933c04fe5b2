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
