import { invalidArgument } from "../errors.ts";
import { stableHash } from "./stable-hash.ts";

/**
 * Opaque keyset page tokens (AIP-158). A token carries the position after the last row returned and
 * a fingerprint of the query's filters: a token replayed with other filters is INVALID_ARGUMENT
 * rather than a silently wrong page.
 */
interface TokenBody<P> {
  /** Which list the token belongs to. */
  k: string;
  /** Fingerprint of the filters. */
  f: string;
  /** Position. */
  p: P;
}

export function encodePageToken<P>(kind: string, filters: unknown, position: P): string {
  const body: TokenBody<P> = { k: kind, f: stableHash(filters).slice(0, 16), p: position };
  return Buffer.from(JSON.stringify(body)).toString("base64url");
}

export function decodePageToken<P>(
  kind: string,
  filters: unknown,
  token: string,
  isPosition: (p: unknown) => p is P,
): P | undefined {
  if (token === "") return undefined;
  let body: Partial<TokenBody<unknown>>;
  try {
    body = JSON.parse(Buffer.from(token, "base64url").toString("utf8"));
  } catch {
    throw invalidArgument("INVALID_PAGE_TOKEN", "page_token is not a token this server issued");
  }
  if (body?.k !== kind || !isPosition(body.p)) {
    throw invalidArgument("INVALID_PAGE_TOKEN", "page_token is not a token this server issued for this list");
  }
  if (body.f !== stableHash(filters).slice(0, 16)) {
    throw invalidArgument(
      "PAGE_TOKEN_MISMATCH",
      "page_token was issued for other filters; repeat them unchanged",
    );
  }
  return body.p;
}

/** AIP-158 page size: 0 means the default, larger than the maximum is clamped. */
export function clampPageSize(requested: number, fallback: number, maximum: number): number {
  if (requested <= 0) return fallback;
  return Math.min(requested, maximum);
}
