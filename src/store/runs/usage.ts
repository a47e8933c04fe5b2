import { DomainError } from "../../core/errors.ts";
import type { Database } from "../../db/database.ts";
import { type ThreadUsage, TOKEN_USAGE_FIELDS, zeroUsage } from "./model.ts";
import { threadUsageByModel } from "./sql.ts";

const INT64_MAX = 2n ** 63n - 1n;

/** Token accounting across runs: what deer-flow's aggregation by thread, model and caller gives. */
export class UsageStore {
  readonly #db: Database;

  constructor(db: Database) {
    this.#db = db;
  }

  /** Sums of a thread's runs, by model and by caller; only terminal runs unless `includeActive`. */
  async threadUsage(tenant: string, threadId: string, includeActive: boolean): Promise<ThreadUsage> {
    const rows = await this.#db.sql.all(threadUsageByModel, tenant, threadId, includeActive);
    const usage = zeroUsage();
    const byModel: ThreadUsage["byModel"] = new Map();
    let totalRuns = 0n;
    for (const row of rows) {
      totalRuns += row.runs;
      for (const field of TOKEN_USAGE_FIELDS) usage[field] += row[field];
      byModel.set(row.model, {
        runs: row.runs,
        inputTokens: row.inputTokens,
        outputTokens: row.outputTokens,
        totalTokens: row.totalTokens,
      });
    }
    for (const field of TOKEN_USAGE_FIELDS) {
      if (usage[field] > INT64_MAX) {
        throw new DomainError(
          "OUT_OF_RANGE",
          "USAGE_OVERFLOW",
          `the thread's ${field} total exceeds what an int64 holds`,
          { thread_id: threadId, field },
        );
      }
    }
    return { totalRuns, usage, byModel };
  }
}
