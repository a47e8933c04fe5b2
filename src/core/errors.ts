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

export const invalidArgument = (reason: string, message: string, metadata: Record<string, string> = {}) =>
  new DomainError("INVALID_ARGUMENT", reason, message, metadata);

/**
 * A reason the server cannot start that the operator can fix (a port in use, an unreachable or
 * missing database, a locked data directory). main.ts prints its message as one line, no stack.
 */
export class StartupError extends Error {
  override name = "StartupError";
}
