import type { Database } from "../../db/database.ts";
import { versionChannel } from "../../db/unit-of-work.ts";
import type { StreamSource } from "../../feed/stream-hub.ts";
import { QUEUE_STREAM, type QueueTask } from "./model.ts";
import { tasksChangedAfter, tasksStreamHead } from "./sql.ts";
import { toTask } from "./tasks.ts";

const ENTRY_OVERHEAD_BYTES = 512;

/**
 * The tenant's queue tasks as one version-ordered stream (WatchTasks): every change of a task gave
 * it the tenant's next "queue_tasks" version under the version row's lock, so versions commit in
 * order and resuming after the last one seen misses nothing (see db/unit-of-work.ts). A task that
 * changed twice since `after` is read once, in its latest state.
 */
export function taskVersionSource(db: Database): StreamSource<QueueTask> {
  return {
    channel: versionChannel(QUEUE_STREAM),
    async head(tenant) {
      return (await db.sql.first(tasksStreamHead, tenant))?.head ?? 0;
    },
    async read(tenant, _stream, after, limit) {
      const rows = await db.sql.all(tasksChangedAfter, tenant, after, limit);
      const head = rows[0]?.head ?? after;
      const entries = rows.flatMap(({ task }) => {
        if (task === null) return [];
        const value = toTask(task);
        return [
          {
            seq: value.version,
            terminal: false,
            bytes:
              JSON.stringify(value.payload).length +
              JSON.stringify(value.result ?? {}).length +
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
