import type { Database } from "../../db/database.ts";
import { versionChannel } from "../../db/unit-of-work.ts";
import type { StreamSource } from "../../feed/stream-hub.ts";
import { SESSIONS_STREAM, type Session } from "./model.ts";
import { toSession } from "./sessions.ts";
import { sessionsChangedAfter, sessionsStreamHead } from "./sql.ts";

const ENTRY_OVERHEAD_BYTES = 512;

/**
 * The tenant's sessions as one version-ordered stream (WatchSessions), read without a reader:
 * every change of a session gave it the tenant's next "sessions" version under the version row's
 * lock, so versions commit in order and resuming after the last one seen misses nothing (see
 * db/unit-of-work.ts). A session that changed twice since `after` is read once, in its latest
 * state; deleted sessions come as tombstones.
 */
export function sessionVersionSource(db: Database): StreamSource<Session> {
  return {
    channel: versionChannel(SESSIONS_STREAM),
    async head(tenant) {
      return (await db.sql.first(sessionsStreamHead, tenant))?.head ?? 0;
    },
    async read(tenant, _stream, after, limit) {
      const rows = await db.sql.all(sessionsChangedAfter, tenant, null, after, limit);
      const head = rows[0]?.head ?? after;
      const entries = rows.flatMap(({ session }) => {
        if (session === null) return [];
        const value = toSession(session);
        return [
          {
            seq: value.version,
            terminal: false,
            bytes:
              JSON.stringify(value.summary).length +
              JSON.stringify(value.metadata).length +
              ENTRY_OVERHEAD_BYTES,
            value,
          },
        ];
      });
      const full = entries.length >= limit;
      const last = entries.at(-1)?.seq ?? after;
      return { entries, through: full ? last : Math.max(head, last), more: full };
    },
  };
}
