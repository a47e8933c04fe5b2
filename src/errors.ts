/**
 * Domain errors: what a store or a handler reports to the caller. The server maps each code to a
 * gRPC/Connect code and the reason to a google.rpc.ErrorInfo in one place (server/errors.ts), so
 * stores never import anything of the wire protocol.
 */
export type ErrorCode =
  | "INVALID_ARGUMENT"
  | "NOT_FOUND"
  | "ALREADY_EXISTS"
  | "FAILED_PRECONDITION"
  | "ABORTED"
  | "OUT_OF_RANGE"
  | "RESOURCE_EXHAUSTED"
  | "UNAUTHENTICATED"
  | "PERMISSION_DENIED"
  | "UNAVAILABLE";

export class DomainError extends Error {
  readonly code: ErrorCode;
  /** UPPER_SNAKE machine-readable reason, stable across releases (google.rpc.ErrorInfo.reason). */
  readonly reason: string;
  /** Extra machine-readable facts (ErrorInfo.metadata). Never put secrets here. */
  readonly metadata: Record<string, string>;

  constructor(code: ErrorCode, reason: string, message: string, metadata: Record<string, string> = {}) {
    super(message);
    this.name = "DomainError";
    this.code = code;
    this.reason = reason;
    this.metadata = metadata;
  }
}

export const runNotFound = (runId: string) =>
  new DomainError("NOT_FOUND", "RUN_NOT_FOUND", `run ${runId} was not found`, { run_id: runId });

export const invalidArgument = (reason: string, message: string, metadata: Record<string, string> = {}) =>
  new DomainError("INVALID_ARGUMENT", reason, message, metadata);
