import { defineEntity, p } from "@mikro-orm/core";

/**
 * Tables of the server itself rather than of an aggregate.
 *
 * watch_versions: one counter per tenant and watched stream ("runs", later "sessions", "tasks").
 * A write that changes a watched row takes the next version from it with an UPDATE, which holds
 * the counter's row lock until commit, so versions of one tenant and stream are handed out in
 * commit order (see db/unit-of-work.ts nextVersion).
 */
export const WatchVersionEntity = defineEntity({
  name: "WatchVersion",
  tableName: "watch_versions",
  properties: {
    tenantId: p.text().primary(),
    stream: p.text().primary(),
    version: p.bigint("bigint").default(0),
  },
});

/** Keys the server makes for itself and every replica must share (the page-token MAC key). */
export const ServerKeyEntity = defineEntity({
  name: "ServerKey",
  tableName: "server_keys",
  properties: {
    name: p.text().primary(),
    secret: p.blob(),
    createdAt: p.datetime(3).defaultRaw("current_timestamp(3)"),
  },
});

export const serverEntities = [WatchVersionEntity, ServerKeyEntity];
