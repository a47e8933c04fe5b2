import type { EntitySchema } from "@mikro-orm/core";

/**
 * Typed decoding of raw result rows, in one place for every store. The two drivers disagree on
 * types: pg returns int8 as a string and (with MikroORM's parsers) timestamptz as text, PGlite
 * returns bigint and Date. A column decoder accepts either and yields one JS type. Whole rows of
 * an entity's table are hydrated by the ORM itself (`col.entity`), exactly as its own reads are.
 */

/** Hydrates a raw row into an entity (MikroORM's em.map, outside the identity map). */
export type EntityMapper = <E extends object>(
  // biome-ignore lint/suspicious/noExplicitAny: entity schemas carry a second type parameter we never use
  entity: EntitySchema<E, any>,
  raw: Record<string, unknown>,
) => E;

export interface ColumnDecoder<T> {
  decode(raw: Record<string, unknown>, mapEntity: EntityMapper): T;
}

export type RowShape = Record<string, ColumnDecoder<unknown>>;

export type RowOf<S extends RowShape> = { [K in keyof S]: S[K] extends ColumnDecoder<infer T> ? T : never };

export class RowDecodeError extends Error {
  override name = "RowDecodeError";
}

const decoder =
  <T>(decode: (value: unknown, column: string) => T) =>
  (column: string): ColumnDecoder<T> => ({ decode: (raw) => decode(raw[column], column) });

const fail = (column: string, expected: string, value: unknown): never => {
  throw new RowDecodeError(`column ${column}: expected ${expected}, got ${typeof value}`);
};

const toBigint = (value: unknown, column: string): bigint => {
  if (typeof value === "bigint") return value;
  if (typeof value === "string" && /^-?\d+$/.test(value)) return BigInt(value);
  if (typeof value === "number" && Number.isSafeInteger(value)) return BigInt(value);
  return fail(column, "an integer", value);
};

const toSafeInt = (value: unknown, column: string): number => {
  const n = toBigint(value, column);
  if (n > BigInt(Number.MAX_SAFE_INTEGER) || n < BigInt(Number.MIN_SAFE_INTEGER)) {
    return fail(column, "a safe integer", value);
  }
  return Number(n);
};

const toDate = (value: unknown, column: string): Date => {
  const date = value instanceof Date ? value : typeof value === "string" ? new Date(value) : undefined;
  if (date === undefined || Number.isNaN(date.getTime())) return fail(column, "a timestamp", value);
  return date;
};

const toText = (value: unknown, column: string): string =>
  typeof value === "string" ? value : fail(column, "text", value);

const toBytes = (value: unknown, column: string): Buffer =>
  value instanceof Uint8Array ? Buffer.from(value) : fail(column, "bytes", value);
const toBoolean = (value: unknown, column: string): boolean =>
  typeof value === "boolean" ? value : fail(column, "a boolean", value);

const nullable =
  <T>(decode: (value: unknown, column: string) => T) =>
  (value: unknown, column: string): T | null =>
    value === null || value === undefined ? null : decode(value, column);

export const col = {
  text: decoder(toText),
  textOrNull: decoder(nullable(toText)),
  /** int8 as an exact bigint: counters a client sent (token usage) must come back unrounded. */
  int64: decoder(toBigint),
  /** numeric (a sum of int8) as an exact bigint; NULL (a sum over no rows) is 0. */
  numeric: decoder((value, column) =>
    value === null || value === undefined ? 0n : toBigint(String(value), column),
  ),
  /** int8 that the server itself bounds far below 2^53 (seqs, versions, counts of rows). */
  safeInt: decoder(toSafeInt),
  safeIntOrNull: decoder(nullable(toSafeInt)),
  timestamp: decoder(toDate),
  timestampOrNull: decoder(nullable(toDate)),
  /** JSON kept as the text the database produced (select it as `col::text`), for byte budgets. */
  jsonText: decoder(toText),
  bytes: decoder(toBytes),
  bytesOrNull: decoder(nullable(toBytes)),
  boolean: decoder(toBoolean),
  booleanOrNull: decoder(nullable(toBoolean)),
  /** The row's columns hydrated as an entity; null when `keyColumn` is NULL (an outer join's miss). */
  // biome-ignore lint/suspicious/noExplicitAny: see EntityMapper
  entityOrNull<E extends object>(entity: EntitySchema<E, any>, keyColumn: string): ColumnDecoder<E | null> {
    return { decode: (raw, mapEntity) => (raw[keyColumn] == null ? null : mapEntity(entity, raw)) };
  },
  // biome-ignore lint/suspicious/noExplicitAny: see EntityMapper
  entity<E extends object>(entity: EntitySchema<E, any>): ColumnDecoder<E> {
    return { decode: (raw, mapEntity) => mapEntity(entity, raw) };
  },
};

export function rowDecoder<S extends RowShape>(
  shape: S,
): (raw: Record<string, unknown>, mapEntity: EntityMapper) => RowOf<S> {
  const entries = Object.entries(shape);
  return (raw, mapEntity) => {
    const row: Record<string, unknown> = {};
    for (const [key, column] of entries) row[key] = column.decode(raw, mapEntity);
    return row as RowOf<S>;
  };
}
