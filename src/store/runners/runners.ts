import { randomUUID } from "node:crypto";
import { v7 as uuidv7 } from "uuid";
import { DomainError } from "../../core/errors.ts";
import { stableHash } from "../../core/hash.ts";
import { isStringTuple, type ListSpec, type Page, type PageRequest, type Paging } from "../../core/paging.ts";
import type { Database } from "../../db/database.ts";
import type { UnitOfWork } from "../../db/unit-of-work.ts";
import { commandNotFound } from "../commands/commands.ts";
import { CommandEntity } from "../commands/entities.ts";
import { checkResultSize } from "../commands/model.ts";
import { SERVER_EVENT, writeServerEvent } from "../events/server-events.ts";
import { unclaim } from "../runs/claims.ts";
import { RunEntity } from "../runs/entities.ts";
import { runNotFound, runnerNotFound } from "../runs/errors.ts";
import { RUNS_STREAM } from "../runs/model.ts";
import { RunnerEntity, RunnerJobEntity, type RunnerJobRow, type RunnerRow } from "./entities.ts";
import {
  DEFAULT_STALE_AFTER_MS,
  type NewRunnerJob,
  type Runner,
  type RunnerFilter,
  type RunnerJob,
  type RunnerRegistration,
} from "./model.ts";
import {
  extendRunnerLeases,
  getRunner,
  heldRunsForUpdate,
  insertRunnerJob,
  listRunners,
  touchRunner,
  upsertRunner,
} from "./sql.ts";

const RUNNER_LIST: ListSpec<string[]> = {
  name: "runners",
  defaultSize: 50,
  maxSize: 500,
  isPosition: isStringTuple(1),
};
/** Oldest first, by (created_at, id). */
const JOB_LIST: ListSpec<string[]> = {
  name: "runner_jobs",
  defaultSize: 50,
  maxSize: 500,
  isPosition: isStringTuple(2),
};

const idempotencyKeyReused = (key: string) =>
  new DomainError(
    "ALREADY_EXISTS",
    "IDEMPOTENCY_KEY_REUSED",
    `idempotency_key ${key} was already used with a different job; use a new key for a new job`,
    { idempotency_key: key },
  );

/**
 * The runner aggregate: registration, heartbeats and liveness, and the job records. A runner's
 * liveness is the age of its last heartbeat by the database's clock, so every replica agrees.
 */
export class RunnerStore {
  readonly #db: Database;
  readonly #uow: UnitOfWork;
  readonly #paging: Paging;

  readonly #maxResultBytes: number;

  constructor(db: Database, uow: UnitOfWork, paging: Paging, maxResultBytes: number) {
    this.#db = db;
    this.#uow = uow;
    this.#paging = paging;
    this.#maxResultBytes = maxResultBytes;
  }

  async register(tenant: string, registration: RunnerRegistration): Promise<Runner> {
    const id = registration.id ?? `runner-${randomUUID()}`;
    await this.#uow.run(tenant, (tx) =>
      tx.sql.first(
        upsertRunner,
        tenant,
        id,
        JSON.stringify(registration.labels),
        JSON.stringify(registration.capabilities),
        registration.version,
        registration.backendProfile,
      ),
    );
    return this.get(tenant, id, DEFAULT_STALE_AFTER_MS);
  }

  /** Marks the runner alive; with a lease, extends every lease it holds. */
  async heartbeat(
    tenant: string,
    runnerId: string,
    leaseMs: number | undefined,
  ): Promise<{ runner: Runner; renewed: number }> {
    const renewed = await this.#uow.run(tenant, async (tx) => {
      await tx.lockVersion(tenant, RUNS_STREAM);
      const touched = await tx.sql.first(touchRunner, tenant, runnerId);
      if (touched === undefined) throw runnerNotFound(runnerId);
      if (leaseMs === undefined) return 0;
      const extended = await tx.sql.all(extendRunnerLeases, tenant, runnerId, leaseMs);
      for (const run of extended) {
        // The lease had run out; nobody took the run meanwhile, so the runner keeps it, on record.
        if (run.lateMs > 0) {
          await writeServerEvent(tx, tenant, run.id, SERVER_EVENT.leaseRenewedLate, {
            runner_id: runnerId,
            late_ms: run.lateMs,
          });
        }
      }
      return extended.length;
    });
    return { runner: await this.get(tenant, runnerId, DEFAULT_STALE_AFTER_MS), renewed };
  }

  async get(tenant: string, runnerId: string, staleAfterMs: number): Promise<Runner> {
    const row = await this.#db.sql.first(getRunner, tenant, runnerId, staleAfterMs);
    if (row === undefined) throw runnerNotFound(runnerId);
    return toRunner(row.runner, row.live, row.heldRuns);
  }

  async list(tenant: string, filter: RunnerFilter, request: PageRequest): Promise<Page<Runner>> {
    const page = this.#paging.start(RUNNER_LIST, tenant, filter, request);
    const rows = await this.#db.sql.all(
      listRunners,
      tenant,
      page.after?.[0] ?? null,
      filter.staleAfterMs,
      filter.state ?? null,
      JSON.stringify(filter.labels),
      page.limit + 1,
    );
    return page.finish(
      rows.map((row) => toRunner(row.runner, row.live, row.heldRuns)),
      (runner) => [runner.id],
    );
  }

  /** Removes the runner; the runs it held go back to PENDING in the same transaction. */
  async deregister(tenant: string, runnerId: string, allowMissing: boolean): Promise<number> {
    return this.#uow.run(tenant, async (tx) => {
      // The tenant's runs version before any run row (store/runs/claims.ts: lock order).
      await tx.lockVersion(tenant, RUNS_STREAM);
      const deleted = await tx.em.nativeDelete(RunnerEntity, { tenantId: tenant, id: runnerId });
      if (deleted === 0) {
        if (allowMissing) return 0;
        throw runnerNotFound(runnerId);
      }
      const held = await tx.sql.all(heldRunsForUpdate, tenant, runnerId);
      for (const { id } of held) {
        await unclaim(tx, tenant, id, SERVER_EVENT.release, {
          runner_id: runnerId,
          reason: "runner deregistered",
        });
      }
      return held.length;
    });
  }

  /** Records a job; idempotent by (run, idempotency key) and a hash of the job. */
  async recordJob(tenant: string, job: NewRunnerJob, idempotencyKey: string | null): Promise<RunnerJob> {
    const resultJson = JSON.stringify(job.result);
    checkResultSize(resultJson, this.#maxResultBytes);
    const payloadHash = stableHash(job);
    const found = await this.#uow.run(tenant, async (tx) => {
      if ((await tx.em.count(RunEntity, { tenantId: tenant, id: job.runId })) === 0)
        throw runNotFound(job.runId);
      if (
        job.commandId !== null &&
        (await tx.em.count(CommandEntity, { tenantId: tenant, id: job.commandId, runId: job.runId })) === 0
      ) {
        throw commandNotFound(job.commandId);
      }
      const id = uuidv7();
      const inserted = await tx.sql.first(
        insertRunnerJob,
        tenant,
        id,
        job.runId,
        job.commandId,
        job.runnerId,
        job.attemptId,
        job.namespace,
        job.jobName,
        job.managerUrl,
        job.image,
        job.sourceCommit,
        job.serviceAccount,
        resultJson,
        idempotencyKey,
        payloadHash,
      );
      return inserted?.id;
    });
    const row = await this.#db.orm.em
      .fork()
      .findOne(
        RunnerJobEntity,
        found !== undefined
          ? { tenantId: tenant, id: found }
          : { tenantId: tenant, runId: job.runId, idempotencyKey },
      );
    if (row === null) throw new Error("a recorded runner job vanished");
    if (found === undefined && row.payloadHash !== payloadHash)
      throw idempotencyKeyReused(idempotencyKey ?? "");
    return toRunnerJob(row);
  }

  async listJobs(
    tenant: string,
    filter: { runId: string; commandId: string | null },
    request: PageRequest,
  ): Promise<Page<RunnerJob>> {
    const page = this.#paging.start(JOB_LIST, tenant, filter, request);
    const em = this.#db.orm.em.fork();
    const where: Record<string, unknown> = { tenantId: tenant, runId: filter.runId };
    if (filter.commandId !== null) where.commandId = filter.commandId;
    if (page.after !== undefined) {
      const createdAt = new Date(page.after[0] ?? "");
      where.$or = [{ createdAt: { $gt: createdAt } }, { createdAt, id: { $gt: page.after[1] } }];
    }
    const rows = await em.find(RunnerJobEntity, where, {
      orderBy: { createdAt: "asc", id: "asc" },
      limit: page.limit + 1,
    });
    if (rows.length === 0 && (await em.count(RunEntity, { tenantId: tenant, id: filter.runId })) === 0) {
      throw runNotFound(filter.runId);
    }
    return page.finish(
      rows.map(toRunnerJob),
      (job) => [job.createdAt.toISOString(), job.id],
      (job) => JSON.stringify(job.result).length + 1024,
    );
  }
}

function toRunner(row: RunnerRow, live: boolean, heldRuns: number): Runner {
  return {
    id: row.id,
    labels: row.labels,
    capabilities: row.capabilities,
    version: row.version ?? null,
    backendProfile: row.backendProfile ?? null,
    registeredAt: row.registeredAt,
    heartbeatAt: row.heartbeatAt,
    live,
    heldRuns,
  };
}

function toRunnerJob(row: RunnerJobRow): RunnerJob {
  return {
    id: row.id,
    runId: row.runId,
    commandId: row.commandId ?? null,
    runnerId: row.runnerId,
    attemptId: row.attemptId ?? null,
    namespace: row.namespace ?? null,
    jobName: row.jobName ?? null,
    managerUrl: row.managerUrl ?? null,
    image: row.image ?? null,
    sourceCommit: row.sourceCommit ?? null,
    serviceAccount: row.serviceAccount ?? null,
    result: row.result,
    idempotencyKey: row.idempotencyKey ?? null,
    createdAt: row.createdAt,
  };
}
