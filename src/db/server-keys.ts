import { randomBytes } from "node:crypto";
import type { Database } from "./database.ts";
import { col } from "./rows.ts";
import { statement } from "./sql.ts";

const insertKey = statement<[name: string, secret: Buffer]>()({
  name: "server_keys.insert",
  text: "insert into server_keys (name, secret) values ($1, $2) on conflict (name) do nothing",
  row: {},
});

const selectKey = statement<[name: string]>()({
  name: "server_keys.select",
  text: "select secret from server_keys where name = $1",
  row: { secret: col.bytes("secret") },
});

/**
 * A random key, made by whichever replica asks first and then shared by all through the database,
 * so a page token issued by one replica is accepted by every other. Nothing to configure.
 */
export async function serverKey(db: Database, name: string): Promise<Buffer> {
  await db.sql.all(insertKey, name, randomBytes(32));
  const row = await db.sql.first(selectKey, name);
  if (row === undefined) throw new Error(`server key ${name} vanished`);
  return row.secret;
}
