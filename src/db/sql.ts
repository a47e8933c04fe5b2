import { CompiledQuery } from "kysely";
import { registerPrepared } from "./prepared.ts";
import { type EntityMapper, type RowOf, type RowShape, rowDecoder } from "./rows.ts";

export type { EntityMapper };

/**
 * A named SQL statement with typed parameters and typed rows. Hot and PostgreSQL-specific
 * statements are defined once, next to the store that owns them (store/<aggregate>/sql.ts), and
 * run through `SqlRunner`; nothing builds SQL by string interpolation. Parameters travel as bind
 * parameters ($1, $2, ...), never inlined into the text, so a value cannot change the statement;
 * on PostgreSQL each is prepared once per connection under its name (db/prepared.ts).
 */
export interface Statement<P extends readonly unknown[], R> {
  /** Unique, dotted: "<aggregate>.<what it does>". Also the prepared statement's name. */
  readonly name: string;
  readonly text: string;
  readonly decode: (raw: Record<string, unknown>, mapEntity: EntityMapper) => R;
  /** Phantom: the parameter tuple, for type checking only. */
  readonly params?: P;
}

const names = new Set<string>();

/**
 * Defines a statement. Curried so that the parameter tuple is written out while the row type is
 * inferred from the row shape:
 *
 *   const lastSeq = statement<[tenant: string, runId: string]>()({
 *     name: "events.last_seq",
 *     text: "select last_seq from runs where tenant_id = $1 and id = $2",
 *     row: { lastSeq: col.safeInt("last_seq") },
 *   });
 */
export function statement<P extends readonly unknown[]>() {
  return <S extends RowShape>(def: { name: string; text: string; row: S }): Statement<P, RowOf<S>> => {
    if (names.has(def.name)) throw new Error(`statement ${def.name} is defined twice`);
    names.add(def.name);
    registerPrepared(def.text, def.name);
    return { name: def.name, text: def.text, decode: rowDecoder(def.row) };
  };
}

/** Anything that runs a compiled query: the Kysely instance of the ORM, or one of its transactions. */
export interface QueryExecutor {
  executeQuery<R>(query: CompiledQuery<R>): Promise<{ rows: R[] }>;
}

/** Runs statements on one executor (the pool, or one transaction). */
export class SqlRunner {
  readonly #executor: () => QueryExecutor;
  readonly #mapEntity: EntityMapper;

  constructor(executor: () => QueryExecutor, mapEntity: EntityMapper) {
    this.#executor = executor;
    this.#mapEntity = mapEntity;
  }

  async all<P extends readonly unknown[], R>(stmt: Statement<P, R>, ...params: P): Promise<R[]> {
    const compiled = CompiledQuery.raw(stmt.text, params.map(encodeParam)) as CompiledQuery<
      Record<string, unknown>
    >;
    const { rows } = await this.#executor().executeQuery(compiled);
    return rows.map((raw) => stmt.decode(raw, this.#mapEntity));
  }

  async first<P extends readonly unknown[], R>(stmt: Statement<P, R>, ...params: P): Promise<R | undefined> {
    return (await this.all(stmt, ...params))[0];
  }
}

/** Values as both drivers accept them: bigint as decimal text, dates as ISO text, bytes as they are, objects as JSON. */
function encodeParam(value: unknown): unknown {
  if (typeof value === "bigint") return value.toString();
  if (value instanceof Date) return value.toISOString();
  if (value instanceof Uint8Array) return value;
  if (value !== null && typeof value === "object" && !Array.isArray(value)) return JSON.stringify(value);
  return value;
}
