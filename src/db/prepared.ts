import pg from "pg";

/**
 * Named (prepared) statements on PostgreSQL. Every statement defined with db/sql.ts is registered
 * here by its text; a pool client sent that exact text prepares it under its name the first time
 * and from then on only binds and executes it, so PostgreSQL parses and plans each hot statement
 * once per connection instead of on every call. Any other text (the ORM's own queries) runs as
 * before. Kysely hands the client only the text and the values, which is why the text is the key.
 */
const namesByText = new Map<string, string>();

export function registerPrepared(text: string, name: string): void {
  namesByText.set(text, name);
}

/** SQLSTATE of "cached plan must not change result type": a table changed under `select *`. */
const PLAN_CHANGED = "0A000";

/** A pg.Client that prepares registered statements; give it to the pool as `Client`. */
export class PreparingClient extends pg.Client {
  /**
   * Statements whose prepared plan went stale on this connection, with how often: a migration
   * that adds a column makes a prepared `returning *` fail once, and the statement is prepared
   * afresh under a new name rather than failing on every call until the replica restarts.
   */
  readonly replanned = new Map<string, number>();
}

const plainQuery = pg.Client.prototype.query as (...args: unknown[]) => Promise<unknown>;
PreparingClient.prototype.query = function (this: PreparingClient, ...args: unknown[]) {
  const [text, values, callback] = args;
  const name =
    typeof text === "string" && Array.isArray(values) && callback === undefined
      ? namesByText.get(text)
      : undefined;
  if (name === undefined) return plainQuery.apply(this, args);
  const named = () => {
    const generation = this.replanned.get(name);
    return { name: generation === undefined ? name : `${name}#${generation}`, text, values };
  };
  return plainQuery.call(this, named()).catch((err: { code?: string }) => {
    if (err?.code !== PLAN_CHANGED) throw err;
    this.replanned.set(name, (this.replanned.get(name) ?? 0) + 1);
    // Outside a transaction the retry succeeds; inside one PostgreSQL has aborted it, the retry
    // fails too, and the caller sees the first error (the unit of work then retries the call).
    return plainQuery.call(this, named()).catch(() => Promise.reject(err));
  });
} as typeof pg.Client.prototype.query;
