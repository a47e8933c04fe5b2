import assert from "node:assert/strict";
import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema, ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.ts";

export function reasonOf(err: unknown): string | undefined {
  return ConnectError.from(err).findDetails(ErrorInfoSchema)[0]?.reason;
}

export function badFieldsOf(err: unknown): string[] {
  return ConnectError.from(err)
    .findDetails(BadRequestSchema)
    .flatMap((d) => d.fieldViolations.map((v) => v.field));
}

/** Asserts that the call fails with this code and, when given, this ErrorInfo reason. */
export async function rejectsWith(
  call: Promise<unknown>,
  code: Code,
  reason?: string,
): Promise<ConnectError> {
  let caught: unknown;
  try {
    await call;
  } catch (err) {
    caught = err;
  }
  assert.ok(
    caught !== undefined,
    `expected ${Code[code]}${reason ? ` (${reason})` : ""}, but the call succeeded`,
  );
  const err = ConnectError.from(caught);
  assert.equal(Code[err.code], Code[code], `wrong code: ${err.message}`);
  if (reason !== undefined) assert.equal(reasonOf(err), reason, `wrong reason: ${err.message}`);
  return err;
}

/** Collects every item of an async iterable (it must end). */
export async function collect<T>(iterable: AsyncIterable<T>): Promise<T[]> {
  const items: T[] = [];
  for await (const item of iterable) items.push(item);
  return items;
}

/** Polls until the check passes or the time is up; the check's last error explains a timeout. */
export async function eventually(check: () => Promise<void> | void, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      await check();
      return;
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
}

export const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);
