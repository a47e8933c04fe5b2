import { DomainError } from "./errors.ts";

/**
 * The JSON text of a caller's value (a payload, a result, an answer), or RESOURCE_EXHAUSTED
 * (PAYLOAD_TOO_LARGE) when it takes more than `maxBytes`: one rule and one message for every
 * service, checked before anything is written.
 */
export function jsonWithinLimit(what: string, value: unknown, maxBytes: number): string {
  const json = JSON.stringify(value);
  const bytes = Buffer.byteLength(json);
  if (bytes > maxBytes) {
    throw new DomainError(
      "RESOURCE_EXHAUSTED",
      "PAYLOAD_TOO_LARGE",
      `${what} takes ${bytes} bytes, more than the limit of ${maxBytes}`,
      { bytes: String(bytes), limit: String(maxBytes) },
    );
  }
  return json;
}
