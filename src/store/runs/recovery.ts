import type { Logger } from "../../core/logger.ts";
import type { UnitOfWork } from "../../db/unit-of-work.ts";
import { SERVER_EVENT, writeServerEvent } from "../events/server-events.ts";
import { unclaim } from "./claims.ts";
import { RUNS_STREAM } from "./model.ts";
import { terminate } from "./runs.ts";
import { expiredLeases, lockExpiredRun, trySweepLock } from "./sql.ts";

/** Any constant works; every agentstore process uses the same one. */
const SWEEP_LOCK_KEY = 7_361_042_216;
/** Runs recovered per transaction; a full batch is followed by another at once. */
const SWEEP_BATCH = 100;

export interface LeaseRecoveryOptions {
  /** How long after its lease expired a run is recovered. */
  graceMs: number;
  /** How often a replica looks for expired leases. */
  intervalMs: number;
}

/**
 * Lease recovery: every replica looks for held runs whose lease expired more than the grace ago,
 * but one at a time (a transaction-scoped advisory lock), so a run is recovered once. Each such
 * run follows its policy: "requeue" puts it back to PENDING for another runner; "fail" ends it
 * FAILED with failure kind "runner_lost", its terminal event ending every open stream. Either way
 * an "agentstore.lease_lost" event says what happened. A runner that went silent thus loses its
 * runs after lease + grace, whichever replicas are up and whether or not any of them restarted.
 */
export class LeaseRecovery {
  readonly #uow: UnitOfWork;
  readonly #options: LeaseRecoveryOptions;
  readonly #logger: Logger;
  #timer: NodeJS.Timeout | undefined;
  #sweeping: Promise<number> | undefined;

  constructor(uow: UnitOfWork, options: LeaseRecoveryOptions, logger: Logger) {
    this.#uow = uow;
    this.#options = options;
    this.#logger = logger;
  }

  start(): void {
    this.#timer = setInterval(() => void this.sweep().catch(() => {}), this.#options.intervalMs);
    this.#timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.#timer);
    await this.#sweeping?.catch(() => {});
  }

  /** Recovers what has expired now; resolves with how many runs it recovered. */
  sweep(): Promise<number> {
    this.#sweeping ??= this.#sweepAll().finally(() => {
      this.#sweeping = undefined;
    });
    return this.#sweeping;
  }

  async #sweepAll(): Promise<number> {
    let total = 0;
    try {
      for (;;) {
        const recovered = await this.#sweepBatch();
        total += recovered;
        if (recovered < SWEEP_BATCH) return total;
      }
    } catch (err) {
      this.#logger.warn({ err: (err as Error).message }, "lease recovery failed; retrying at the next sweep");
      throw err;
    }
  }

  #sweepBatch(): Promise<number> {
    return this.#uow.run(null, async (tx) => {
      const lock = await tx.sql.first(trySweepLock, SWEEP_LOCK_KEY);
      if (lock?.locked !== true) return 0;
      const candidates = await tx.sql.all(expiredLeases, this.#options.graceMs, SWEEP_BATCH);
      // Tenant by tenant: its runs version first, then its runs (store/runs/claims.ts: lock order).
      const expired = [];
      const locked = new Set<string>();
      for (const candidate of [...candidates].sort((a, b) =>
        a.tenant < b.tenant ? -1 : a.tenant > b.tenant ? 1 : 0,
      )) {
        if (!locked.has(candidate.tenant)) {
          await tx.lockVersion(candidate.tenant, RUNS_STREAM);
          locked.add(candidate.tenant);
        }
        const still = await tx.sql.first(
          lockExpiredRun,
          candidate.tenant,
          candidate.id,
          candidate.runnerId,
          this.#options.graceMs,
        );
        if (still !== undefined) expired.push(candidate);
      }
      for (const run of expired) {
        const lost = {
          runner_id: run.runnerId,
          policy: run.policy,
          lease_expire_time: run.leaseExpiresAt.toISOString(),
        };
        if (run.policy === "requeue") {
          await unclaim(tx, run.tenant, run.id, SERVER_EVENT.leaseLost, lost);
        } else {
          await writeServerEvent(tx, run.tenant, run.id, SERVER_EVENT.leaseLost, lost);
          await terminate(tx, run.tenant, run.id, {
            status: "failed",
            failureKind: "runner_lost",
            failureMessage: `runner ${run.runnerId} stopped renewing its lease, which expired at ${run.leaseExpiresAt.toISOString()}`,
          });
        }
      }
      if (expired.length > 0)
        this.#logger.info({ runs: expired.length }, "recovered runs with expired leases");
      return expired.length;
    });
  }
}
