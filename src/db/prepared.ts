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

/** A pg.Client that prepares registered statements; give it to the pool as `Client`. */
export class PreparingClient extends pg.Client {}

const plainQuery = pg.Client.prototype.query as (...args: unknown[]) => unknown;
PreparingClient.prototype.query = function (this: pg.Client, ...args: unknown[]) {
  const [text, values, callback] = args;
  if (typeof text === "string" && Array.isArray(values)) {
    const name = namesByText.get(text);
    if (name !== undefined) return plainQuery.call(this, { name, text, values }, callback);
  }
  return plainQuery.apply(this, args);
} as typeof pg.Client.prototype.query;
