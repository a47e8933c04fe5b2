import { createHmac, timingSafeEqual } from "node:crypto";
import { invalidArgument } from "./errors.ts";
import { stableHash } from "./hash.ts";

/**
 * Every List of every service pages here (AIP-158): page-size defaults and clamping, opaque
 * keyset tokens bound to their list, tenant and filters, and the byte budget of a page.
 *
 * A token is `base64url(body).base64url(mac)`: the body holds the position after the last row
 * returned, the MAC (HMAC-SHA-256 under a key every replica shares, see db/server-keys.ts) covers
 * the body and the tenant. A token the server did not issue, or issued to another tenant, fails
 * the MAC and is INVALID_ARGUMENT (INVALID_PAGE_TOKEN) before its position is ever parsed, so no
 * forged position can reach a query.
 */
export interface ListSpec<P> {
  /** Which list a token belongs to; a token of one list is refused by another. */
  readonly name: string;
  readonly defaultSize: number;
  readonly maxSize: number;
  /** Shape check of a decoded position (defence in depth: the MAC already vouches for it). */
  readonly isPosition: (p: unknown) => p is P;
}

export interface PageRequest {
  pageSize: number;
  pageToken: string;
}

/** What a store needs to run one page's query: how many rows, after which position. */
export interface PageStart<P> {
  /** Rows to return at most; query `limit + 1` to learn whether there are more. */
  readonly limit: number;
  /** The position to continue after; undefined on the first page. */
  readonly after: P | undefined;
  /** Builds the page from the rows the query returned (up to `limit + 1`). */
  finish<T>(rows: readonly T[], positionOf: (row: T) => P, sizeOf?: (row: T) => number): Page<T>;
  /** The token of the page after `position`, for queries that bound their pages themselves. */
  tokenAfter(position: P): string;
}

export interface Page<T> {
  items: T[];
  nextPageToken: string;
}

/**
 * Roughly how much one list response may carry. gRPC clients refuse messages over 4 MiB by
 * default, and a single row (a run's metadata, an event's payload) may be large.
 */
export const PAGE_BUDGET_BYTES = 3 * 1024 * 1024;

interface TokenBody {
  /** List name. */
  k: string;
  /** Fingerprint of the filters. */
  f: string;
  /** Position. */
  p: unknown;
}

const MAC_BYTES = 16;

export class Paging {
  readonly #key: Buffer;

  constructor(key: Buffer) {
    this.#key = key;
  }

  /** Validates the request's paging fields against the list and decodes its token. */
  start<P>(spec: ListSpec<P>, tenant: string, filters: unknown, request: PageRequest): PageStart<P> {
    const limit = clampPageSize(request.pageSize, spec.defaultSize, spec.maxSize);
    const fingerprint = stableHash(filters).slice(0, 16);
    const after =
      request.pageToken === "" ? undefined : this.#decode(spec, tenant, fingerprint, request.pageToken);
    return {
      limit,
      after,
      tokenAfter: (position) => this.#encode(spec, tenant, fingerprint, position),
      finish: (rows, positionOf, sizeOf) => {
        const items = takeWithinBudget(rows.slice(0, limit), sizeOf);
        const last = items.at(-1);
        const more = rows.length > items.length;
        return {
          items,
          nextPageToken:
            more && last !== undefined ? this.#encode(spec, tenant, fingerprint, positionOf(last)) : "",
        };
      },
    };
  }

  #encode(spec: ListSpec<unknown>, tenant: string, fingerprint: string, position: unknown): string {
    const body = Buffer.from(
      JSON.stringify({ k: spec.name, f: fingerprint, p: position } satisfies TokenBody),
    );
    return `${body.toString("base64url")}.${this.#mac(tenant, body).toString("base64url")}`;
  }

  #decode<P>(spec: ListSpec<P>, tenant: string, fingerprint: string, token: string): P {
    const [bodyText, macText, ...rest] = token.split(".");
    const body = Buffer.from(bodyText ?? "", "base64url");
    const mac = Buffer.from(macText ?? "", "base64url");
    if (rest.length > 0 || mac.length !== MAC_BYTES || !timingSafeEqual(mac, this.#mac(tenant, body))) {
      throw invalidArgument("INVALID_PAGE_TOKEN", "page_token is not a token this server issued");
    }
    let parsed: Partial<TokenBody>;
    try {
      parsed = JSON.parse(body.toString("utf8"));
    } catch {
      throw invalidArgument("INVALID_PAGE_TOKEN", "page_token is not a token this server issued");
    }
    if (parsed.k !== spec.name || !spec.isPosition(parsed.p)) {
      throw invalidArgument("INVALID_PAGE_TOKEN", `page_token was issued for another list than ${spec.name}`);
    }
    if (parsed.f !== fingerprint) {
      throw invalidArgument(
        "PAGE_TOKEN_MISMATCH",
        "page_token was issued for other filters; repeat them unchanged",
      );
    }
    return parsed.p;
  }

  #mac(tenant: string, body: Buffer): Buffer {
    return createHmac("sha256", this.#key)
      .update(tenant)
      .update("\u0000")
      .update(body)
      .digest()
      .subarray(0, MAC_BYTES);
  }
}

/** AIP-158 page size: 0 means the default, larger than the maximum is clamped. */
export function clampPageSize(requested: number, fallback: number, maximum: number): number {
  if (requested <= 0) return fallback;
  return Math.min(requested, maximum);
}

/** The leading rows whose estimated size fits the response budget (always at least one). */
export function takeWithinBudget<T>(
  rows: readonly T[],
  sizeOf: ((row: T) => number) | undefined,
  budget = PAGE_BUDGET_BYTES,
): T[] {
  if (sizeOf === undefined) return [...rows];
  let bytes = 0;
  for (const [index, row] of rows.entries()) {
    bytes += sizeOf(row);
    if (bytes > budget && index > 0) return rows.slice(0, index);
  }
  return [...rows];
}

/** Position guards shared by lists. */
export const isStringTuple =
  (length: number) =>
  (p: unknown): p is string[] =>
    Array.isArray(p) && p.length === length && p.every((v) => typeof v === "string");
