import type { Database } from "../../db/database.ts";
import { versionChannel } from "../../db/unit-of-work.ts";
import type { StreamSource } from "../../feed/stream-hub.ts";
import { RUNS_STREAM, type Run } from "./model.ts";
import { toRun } from "./runs.ts";
import { runsChangedAfter, runsStreamHead } from "./sql.ts";

const ENTRY_OVERHEAD_BYTES = 512;

/**
 * The tenant's runs as one version-ordered stream (WatchRuns): every change of a run gave it the
 * tenant's next "runs" version, so reading `version > after` in version order, resumed from the
 * last version seen, misses no change (see db/unit-of-work.ts for why versions commit in order).
 * A run that changed twice since `after` is read once, in its latest state.
 */
export function runVersionSource<T>(db: Database, toValue: (run: Run) => T): StreamSource<T> {
  return {
    channel: versionChannel(RUNS_STREAM),
    async head(tenant) {
      return (await db.sql.first(runsStreamHead, tenant))?.head ?? 0;
    },
    async read(tenant, _stream, after, limit) {
      const rows = await db.sql.all(runsChangedAfter, tenant, after, limit);
      const head = rows[0]?.head ?? after;
      const entries = rows.flatMap(({ run }) => {
        if (run === null) return [];
        const value = toRun(run);
        return [
          {
            seq: value.version,
            terminal: false,
            bytes:
              JSON.stringify(value.metadata).length +
              JSON.stringify(value.input).length +
              ENTRY_OVERHEAD_BYTES,
            value: toValue(value),
          },
        ];
      });
      const full = entries.length >= limit;
      const last = entries.at(-1)?.seq ?? after;
      return { entries, through: full ? last : Math.max(head, last), more: full };
    },
  };
}
