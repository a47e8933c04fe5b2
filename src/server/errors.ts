import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { ConnectionException, DeadlockException, LockWaitTimeoutException } from "@mikro-orm/core";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.ts";
import { DomainError, type ErrorCode } from "../core/errors.ts";
import type { Logger } from "../core/logger.ts";

export const ERROR_DOMAIN = "agentstore.dev";

const CODES: Record<ErrorCode, Code> = {
  INVALID_ARGUMENT: Code.InvalidArgument,
  NOT_FOUND: Code.NotFound,
  ALREADY_EXISTS: Code.AlreadyExists,
  FAILED_PRECONDITION: Code.FailedPrecondition,
  ABORTED: Code.Aborted,
  OUT_OF_RANGE: Code.OutOfRange,
  RESOURCE_EXHAUSTED: Code.ResourceExhausted,
  UNAUTHENTICATED: Code.Unauthenticated,
  PERMISSION_DENIED: Code.PermissionDenied,
  UNAVAILABLE: Code.Unavailable,
};

export function connectError(
  code: Code,
  reason: string,
  message: string,
  metadata: Record<string, string> = {},
) {
  return new ConnectError(message, code, undefined, [
    { desc: ErrorInfoSchema, value: create(ErrorInfoSchema, { reason, domain: ERROR_DOMAIN, metadata }) },
  ]);
}

/**
 * The one place where errors become wire errors. Domain errors keep their code and reason; a lost
 * database connection is UNAVAILABLE (the client should retry, possibly elsewhere); a value the
 * database refused (SQLSTATE class 22) is INVALID_ARGUMENT; a deadlock or lock timeout is ABORTED;
 * anything else is INTERNAL with its cause logged here and never sent.
 */
export function toConnectError(err: unknown, logger: Logger, procedure: string): ConnectError {
  if (err instanceof ConnectError) {
    if (err.code === Code.Internal || err.code === Code.Unknown) {
      logger.error({ err, procedure }, "internal error");
    }
    return err;
  }
  if (err instanceof DomainError) {
    return connectError(CODES[err.code], err.reason, err.message, err.metadata);
  }
  if (isClientGone(err)) {
    return new ConnectError("the client went away", Code.Canceled);
  }
  if (isDatabaseUnavailable(err)) {
    logger.warn({ err: describe(err), procedure }, "database unavailable");
    return connectError(
      Code.Unavailable,
      "DATABASE_UNAVAILABLE",
      "the database is unreachable; retry shortly",
    );
  }
  const state = sqlState(err) ?? sqlState((err as { cause?: unknown })?.cause);
  if (state?.startsWith("22")) {
    // A data exception: a value the database cannot take reached it. The request guard should have
    // refused it first, so this is logged loudly, but the caller is told it is their input, which a
    // retry cannot fix, rather than INTERNAL.
    logger.error({ err, procedure }, "a value the database refused got past the request guard");
    return connectError(Code.InvalidArgument, "INVALID_VALUE", "a value in the request cannot be stored");
  }
  if (
    err instanceof DeadlockException ||
    err instanceof LockWaitTimeoutException ||
    sqlState(err) === "40001"
  ) {
    return connectError(
      Code.Aborted,
      "CONCURRENT_UPDATE",
      "a concurrent update conflicted with this one; retry",
    );
  }
  logger.error({ err, procedure }, "internal error");
  return connectError(Code.Internal, "INTERNAL", "internal error");
}

const CONNECTION_ERRNOS = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ETIMEDOUT",
  "EPIPE",
  "EHOSTUNREACH",
  "ENOTFOUND",
]);
const CONNECTION_MESSAGES =
  /Connection terminated|timeout exceeded when trying to connect|Client has encountered a connection error|Connection ended|connection is closed|PGlite is closed/i;

function isDatabaseUnavailable(err: unknown): boolean {
  for (let e: unknown = err, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    if (e instanceof ConnectionException) return true;
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string" && CONNECTION_ERRNOS.has(code)) return true;
    const state = sqlState(e);
    if (state?.startsWith("08") || state === "57P01" || state === "57P02" || state === "57P03") return true;
    if (CONNECTION_MESSAGES.test(e.message)) return true;
  }
  return false;
}

/** A stream the client closed or reset before the call ended: its business, not a server fault. */
function isClientGone(err: unknown): boolean {
  const e = err as { code?: unknown; name?: unknown };
  return e?.code === "ERR_STREAM_PREMATURE_CLOSE" || e?.name === "AbortError";
}

function sqlState(err: unknown): string | undefined {
  const e = err as { sqlState?: unknown; code?: unknown };
  if (typeof e?.sqlState === "string") return e.sqlState;
  return typeof e?.code === "string" && /^[0-9A-Z]{5}$/.test(e.code) ? e.code : undefined;
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
