/**
 * connect-node aborts an AbortController at the end of every call, without a reason; by the DOM
 * standard that makes a new DOMException, whose stack trace V8 captures, on every call: about 2 %
 * of the server's CPU per unary call in a profile (bench/write-path.ts, 1 client). A reasonless
 * abort in this process gets one shared AbortError instead. Everything that reads the reason still
 * sees an AbortError with the standard name and message; only its stack (from start-up) differs.
 */
const SHARED_ABORT_REASON = new DOMException("This operation was aborted", "AbortError");

let installed = false;

export function shareReasonlessAborts(): void {
  if (installed) return;
  installed = true;
  const abort = AbortController.prototype.abort;
  AbortController.prototype.abort = function (this: AbortController, reason?: unknown) {
    abort.call(this, reason === undefined ? SHARED_ABORT_REASON : reason);
  };
}
