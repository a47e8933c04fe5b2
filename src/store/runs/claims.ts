import type { Database } from "../../db/database.ts";
import type { Tx, UnitOfWork } from "../../db/unit-of-work.ts";
import { SERVER_EVENT, writeServerEvent } from "../events/server-events.ts";
import { RunnerEntity } from "../runners/entities.ts";
import type { PendingRunSignal } from "./dispatch.ts";
import { RunEntity } from "./entities.ts";
import {
  notLeaseHolder,
  runIsTerminal,
  runLeased,
  runNotFound,
  runnerNotFound,
  runQueued,
} from "./errors.ts";
import { isTerminal, PENDING_RUNS_CHANNEL, RUNS_STREAM, type Run } from "./model.ts";
import { toRun } from "./runs.ts";
import {
  anyPendingRun,
  claimedByRequest,
  claimRun,
  lockRun,
  nextPendingRun,
  queuedBehind,
  renewLease,
  unclaimRun,
} from "./sql.ts";

export interface PendingRunFilter {
  assistantId: string | null;
  backendProfile: string | null;
  project: string | null;
  labels: Record<string, string>;
}

/**
 * Claims and leases: which runner holds a run, until when. Leases are kept by the database's
 * clock, so replicas with skewed clocks agree on who holds what. Every claim, takeover, late
 * renewal and release is also an event in the run's log.
 *
 * Lock order: a transaction that changes runs takes its tenant's runs version lock (the WatchRuns
 * counter row, db/unit-of-work.ts) before it locks any run row, as FinishRun and
 * UpdateRunProgress do, so that a claim and a finish of the same run never deadlock.
 */
export class ClaimStore {
  readonly #db: Database;
  readonly #uow: UnitOfWork;
  readonly #pending: PendingRunSignal;

  constructor(db: Database, uow: UnitOfWork, pending: PendingRunSignal) {
    this.#db = db;
    this.#uow = uow;
    this.#pending = pending;
  }

  async claim(
    tenant: string,
    runId: string,
    runnerId: string,
    leaseMs: number,
  ): Promise<{ run: Run; takeover: boolean }> {
    return this.#uow.run(tenant, async (tx) => {
      await tx.lockVersion(tenant, RUNS_STREAM);
      await requireRunner(tx, tenant, runnerId);
      const locked = await tx.sql.first(lockRun, tenant, runId);
      if (locked === undefined) throw runNotFound(runId);
      if (isTerminal(locked.status)) throw runIsTerminal(locked);
      if (locked.runnerId !== null && locked.runnerId !== runnerId && locked.leaseLive) {
        throw runLeased(runId, locked.runnerId, locked.leaseExpiresAt);
      }
      const ahead = await tx.sql.first(queuedBehind, tenant, runId);
      if (ahead !== undefined) throw runQueued(runId, ahead.id);
      const previous = locked.runnerId !== runnerId ? locked.runnerId : null;
      return {
        run: await give(tx, tenant, runId, runnerId, leaseMs, previous, null),
        takeover: previous !== null,
      };
    });
  }

  /**
   * One attempt at the oldest matching pending run; undefined when there is none right now. With a
   * request id, a retry gets the run the first attempt claimed (while the runner holds it).
   */
  async claimNext(
    tenant: string,
    runnerId: string,
    filter: PendingRunFilter,
    leaseMs: number,
    requestId: string | null,
  ): Promise<Run | undefined> {
    const filterParams = [
      tenant,
      filter.assistantId,
      filter.backendProfile,
      filter.project,
      JSON.stringify(filter.labels),
    ] as const;
    if (requestId !== null) {
      const earlier = await this.#db.sql.first(claimedByRequest, tenant, runnerId, requestId);
      if (earlier !== undefined) return toRun(earlier.run);
    }
    // Most attempts of a waiting runner find nothing: find that out without taking any lock.
    const probe = await this.#db.sql.first(anyPendingRun, ...filterParams);
    if (probe?.found !== true) {
      await requireRunnerOutside(this.#db, tenant, runnerId);
      return undefined;
    }
    return this.#uow.run(tenant, async (tx) => {
      await tx.lockVersion(tenant, RUNS_STREAM);
      await requireRunner(tx, tenant, runnerId);
      const next = await tx.sql.first(nextPendingRun, ...filterParams);
      if (next === undefined) return undefined;
      return give(tx, tenant, next.id, runnerId, leaseMs, null, requestId);
    });
  }

  /**
   * Claims the next matching pending run, waiting up to waitMs for one to arrive (on any replica)
   * when there is none. undefined when the wait ended empty; the signal's reason when it aborted.
   */
  async claimNextWaiting(
    tenant: string,
    runnerId: string,
    filter: PendingRunFilter,
    leaseMs: number,
    waitMs: number,
    requestId: string | null,
    signal: AbortSignal,
  ): Promise<Run | undefined> {
    const deadline = Date.now() + waitMs;
    for (;;) {
      // Armed before looking: a run that becomes pending while we look still wakes us.
      const waiter = this.#pending.arm(tenant);
      try {
        const run = await this.claimNext(tenant, runnerId, filter, leaseMs, requestId);
        if (run !== undefined) {
          if (signal.aborted) {
            // The caller went away while we claimed: nobody would work on the run, so give it back.
            await this.release(tenant, run.id, runnerId, "the claiming call was cancelled").catch(() => {});
            throw signal.reason;
          }
          return run;
        }
        const left = deadline - Date.now();
        if (left <= 0) return undefined;
        await waiter.wait(left, signal);
      } finally {
        waiter.disarm();
      }
    }
  }

  async renew(tenant: string, runId: string, runnerId: string, leaseMs: number): Promise<Run> {
    return this.#uow.run(tenant, async (tx) => {
      await tx.lockVersion(tenant, RUNS_STREAM);
      const renewed = await tx.sql.first(renewLease, tenant, runId, runnerId, leaseMs);
      if (renewed === undefined) {
        const run = await tx.em.findOne(
          RunEntity,
          { tenantId: tenant, id: runId },
          { fields: ["id", "runnerId"] },
        );
        if (run === null) throw runNotFound(runId);
        throw notLeaseHolder(runId, runnerId, run.runnerId ?? null);
      }
      if (renewed.lateMs > 0) {
        // The lease had run out; nobody took the run meanwhile, so the holder keeps it, on record.
        await writeServerEvent(tx, tenant, runId, SERVER_EVENT.leaseRenewedLate, {
          runner_id: runnerId,
          late_ms: renewed.lateMs,
        });
      }
      return toRun(renewed.run);
    });
  }

  async release(tenant: string, runId: string, runnerId: string, reason: string): Promise<Run> {
    return this.#uow.run(tenant, async (tx) => {
      await tx.lockVersion(tenant, RUNS_STREAM);
      const locked = await tx.sql.first(lockRun, tenant, runId);
      if (locked === undefined) throw runNotFound(runId);
      if (locked.runnerId !== runnerId || isTerminal(locked.status)) {
        throw notLeaseHolder(runId, runnerId, isTerminal(locked.status) ? null : locked.runnerId);
      }
      return unclaim(tx, tenant, runId, SERVER_EVENT.release, {
        runner_id: runnerId,
        reason: reason || "released",
      });
    });
  }

  /**
   * Whether the runner holds the run right now (StreamCommands' admission); an ended run admits the
   * runners that held it at some point, to read what was sent to them.
   */
  async holds(
    tenant: string,
    runId: string,
    runnerId: string,
    heldOnce: () => Promise<boolean>,
  ): Promise<Run> {
    const run = await this.#db.orm.em.fork().findOne(RunEntity, { tenantId: tenant, id: runId });
    if (run === null) throw runNotFound(runId);
    if (isTerminal(run.status) ? !(await heldOnce()) : run.runnerId !== runnerId) {
      throw notLeaseHolder(runId, runnerId, run.runnerId ?? null);
    }
    return toRun(run);
  }
}

async function requireRunner(tx: Tx, tenant: string, runnerId: string): Promise<void> {
  const count = await tx.em.count(RunnerEntity, { tenantId: tenant, id: runnerId });
  if (count === 0) throw runnerNotFound(runnerId);
}

async function requireRunnerOutside(db: Database, tenant: string, runnerId: string): Promise<void> {
  const count = await db.orm.em.fork().count(RunnerEntity, { tenantId: tenant, id: runnerId });
  if (count === 0) throw runnerNotFound(runnerId);
}

/** Hands the locked, active run to the runner and writes the claim event. */
async function give(
  tx: Tx,
  tenant: string,
  runId: string,
  runnerId: string,
  leaseMs: number,
  previousRunnerId: string | null,
  requestId: string | null,
): Promise<Run> {
  const version = await tx.nextVersion(tenant, RUNS_STREAM);
  const claimed = await tx.sql.first(claimRun, tenant, runId, runnerId, leaseMs, version, requestId);
  if (claimed === undefined) throw runNotFound(runId);
  const run = toRun(claimed.run);
  const event = await writeServerEvent(tx, tenant, runId, SERVER_EVENT.claim, {
    runner_id: runnerId,
    lease_expire_time: run.leaseExpiresAt?.toISOString() ?? "",
    previous_runner_id: previousRunnerId ?? "",
    takeover: previousRunnerId !== null,
  });
  return { ...run, lastSeq: event.seq, updatedAt: event.createdAt };
}

/**
 * Takes a held run back from its runner: PENDING again, for any runner (ReleaseRun, a
 * deregistered runner, lease recovery's requeue). Writes `type` into the run's log and tells
 * waiting ClaimNextRun calls. The transaction must hold its tenant's runs version lock already
 * (see the class comment).
 */
export async function unclaim(
  tx: Tx,
  tenant: string,
  runId: string,
  type: typeof SERVER_EVENT.release | typeof SERVER_EVENT.leaseLost,
  payload: Record<string, unknown>,
): Promise<Run> {
  const version = await tx.nextVersion(tenant, RUNS_STREAM);
  const released = await tx.sql.first(unclaimRun, tenant, runId, version);
  if (released === undefined) throw runNotFound(runId);
  const event = await writeServerEvent(tx, tenant, runId, type, payload);
  tx.publish({ channel: PENDING_RUNS_CHANNEL, tenant, key: "", seq: version });
  return { ...toRun(released.run), lastSeq: event.seq, updatedAt: event.createdAt };
}
