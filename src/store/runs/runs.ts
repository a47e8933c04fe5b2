import { LockMode } from "@mikro-orm/core";
import { v7 as uuidv7 } from "uuid";
import type { RunLimits } from "../../config/index.ts";
import { DomainError } from "../../core/errors.ts";
import { stableHash } from "../../core/hash.ts";
import { isStringTuple, type ListSpec, type Page, type PageRequest, type Paging } from "../../core/paging.ts";
import type { Database } from "../../db/database.ts";
import type { Tx, UnitOfWork } from "../../db/unit-of-work.ts";
import { CommandEntity } from "../commands/entities.ts";
import { cancelOpenCommands } from "../commands/sql.ts";
import { RunEventBatchEntity, RunEventEntity } from "../events/entities.ts";
import { RUN_EVENTS_CHANNEL } from "../events/events.ts";
import { insertTerminalEvent } from "../events/sql.ts";
import { RunnerJobEntity } from "../runners/entities.ts";
import { RunEntity, type RunRow } from "./entities.ts";
import { notLeaseHolder, requestIdReused, runIsTerminal, runNotFound } from "./errors.ts";
import {
  ACTIVE_STATUSES,
  isTerminal,
  type MultitaskStrategy,
  type NewRun,
  PENDING_RUNS_CHANNEL,
  RUN_CREATED_IN_SESSION,
  RUNS_STREAM,
  type Run,
  type RunFilter,
  type RunOutcome,
  type RunSnapshot,
  type RunStatus,
  SESSION_RUN_CHANGED,
} from "./model.ts";
import { insertRun, lockThread, runsStreamHead, terminateRun, updateProgress } from "./sql.ts";

/** Thrown inside a transaction to roll it back when a concurrent idempotent create won the race. */
class LostIdempotencyRace extends Error {}

/** Newest first, by (created_at, id). */
const RUN_LIST: ListSpec<string[]> = {
  name: "runs",
  defaultSize: 50,
  maxSize: 500,
  isPosition: isStringTuple(2),
};
/** Oldest first, with the first page's cut-off carried along: (cutoff, created_at, id). */
const INFLIGHT_LIST: ListSpec<string[]> = {
  name: "inflight",
  defaultSize: 50,
  maxSize: 500,
  isPosition: isStringTuple(3),
};

/** Roughly what a run takes in a response: its JSON plus the fixed fields. */
const runSize = (run: Run) => JSON.stringify(run.metadata).length + JSON.stringify(run.input).length + 512;

/**
 * The run aggregate: creating, reading, listing and ending runs. Every method takes the tenant
 * first and every statement filters by it; every write is one unit of work, and every change of a
 * run takes the next version of the tenant's "runs" stream (WatchRuns).
 */
export class RunStore {
  readonly #db: Database;
  readonly #uow: UnitOfWork;
  readonly #paging: Paging;
  readonly #limits: RunLimits;

  constructor(db: Database, uow: UnitOfWork, paging: Paging, limits: RunLimits) {
    this.#db = db;
    this.#uow = uow;
    this.#paging = paging;
    this.#limits = limits;
  }

  async createRun(tenant: string, run: NewRun, requestId: string | null): Promise<Run> {
    const jsonBytes =
      Buffer.byteLength(JSON.stringify(run.metadata)) + Buffer.byteLength(JSON.stringify(run.input));
    if (jsonBytes > this.#limits.maxRunJsonBytes) {
      throw new DomainError(
        "RESOURCE_EXHAUSTED",
        "PAYLOAD_TOO_LARGE",
        `run metadata and input take ${jsonBytes} bytes, more than the limit of ${this.#limits.maxRunJsonBytes}`,
        { bytes: String(jsonBytes), limit: String(this.#limits.maxRunJsonBytes) },
      );
    }
    const requestHash = requestId === null ? null : stableHash(run);
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.#uow.run(tenant, async (tx) => {
          // Lock order (db/unit-of-work.ts): the version before the thread's lock and any run row.
          await tx.lockVersion(tenant, RUNS_STREAM);
          if (run.threadId !== null) await tx.sql.all(lockThread, `runs/${tenant}/${run.threadId}`);
          if (requestId !== null) {
            const existing = await tx.em.findOne(RunEntity, { tenantId: tenant, requestId });
            if (existing !== null) {
              if (existing.requestHash !== requestHash) throw requestIdReused(requestId);
              return toRun(existing);
            }
          }
          const id = uuidv7();
          if (run.threadId !== null) await this.#applyMultitask(tx, tenant, run, id);
          const version = await tx.nextVersion(tenant, RUNS_STREAM);
          const inserted = await tx.sql.first(
            insertRun,
            tenant,
            id,
            requestId,
            requestHash,
            run.threadId,
            run.sessionId,
            run.assistantId,
            run.userId,
            run.project,
            run.modelName,
            run.backendProfile,
            JSON.stringify(run.metadata),
            JSON.stringify(run.input),
            run.multitaskStrategy,
            version,
            JSON.stringify(run.labels),
            run.leaseLostPolicy,
          );
          if (inserted === undefined) throw new LostIdempotencyRace();
          if (run.sessionId !== null) tx.notice({ topic: RUN_CREATED_IN_SESSION, tenant, key: id });
          tx.publish({ channel: PENDING_RUNS_CHANNEL, tenant, key: "", seq: version });
          return toRun(inserted.run);
        });
      } catch (err) {
        // A concurrent create with the same request_id committed first; the next attempt finds it.
        if (err instanceof LostIdempotencyRace && attempt === 0) continue;
        throw err;
      }
    }
  }

  /** The newest version of the tenant's runs stream (WatchRuns), 0 before the first change. */
  async watchHead(tenant: string): Promise<number> {
    return (await this.#db.sql.first(runsStreamHead, tenant))?.head ?? 0;
  }

  async getRun(tenant: string, runId: string): Promise<Run> {
    const run = await this.#db.orm.em.fork().findOne(RunEntity, { tenantId: tenant, id: runId });
    if (run === null) throw runNotFound(runId);
    return toRun(run);
  }

  async listRuns(tenant: string, filter: RunFilter, request: PageRequest): Promise<Page<Run>> {
    const page = this.#paging.start(RUN_LIST, tenant, filter, request);
    const where: Record<string, unknown> = { tenantId: tenant };
    if (filter.threadId !== undefined) where.threadId = filter.threadId;
    if (filter.sessionId !== undefined) where.sessionId = filter.sessionId;
    if (filter.userId !== undefined) where.userId = filter.userId;
    if (filter.status !== undefined) where.status = filter.status;
    if (page.after !== undefined) {
      const [createdAtIso = "", id] = page.after;
      const createdAt = new Date(createdAtIso);
      where.$or = [{ createdAt: { $lt: createdAt } }, { createdAt, id: { $lt: id } }];
    }
    const rows = await this.#db.orm.em
      .fork()
      .find(RunEntity, where, { orderBy: { createdAt: "desc", id: "desc" }, limit: page.limit + 1 });
    return page.finish(rows.map(toRun), (run) => [run.createdAt.toISOString(), run.id], runSize);
  }

  /**
   * Active runs created before `createdBefore` (now when undefined), oldest first. The cut-off of
   * the first page travels in the token, so later pages neither move it nor need it repeated.
   */
  async listInflightRuns(
    tenant: string,
    createdBefore: Date | undefined,
    request: PageRequest,
  ): Promise<Page<Run>> {
    const filters = { createdBefore: createdBefore?.toISOString() ?? null };
    const page = this.#paging.start(INFLIGHT_LIST, tenant, filters, request);
    const cutoff = page.after !== undefined ? new Date(page.after[0] ?? "") : (createdBefore ?? new Date());
    const where: Record<string, unknown> = {
      tenantId: tenant,
      status: { $in: ACTIVE_STATUSES },
      createdAt: { $lt: cutoff },
    };
    if (page.after !== undefined) {
      const createdAt = new Date(page.after[1] ?? "");
      where.$and = [{ $or: [{ createdAt: { $gt: createdAt } }, { createdAt, id: { $gt: page.after[2] } }] }];
    }
    const rows = await this.#db.orm.em
      .fork()
      .find(RunEntity, where, { orderBy: { createdAt: "asc", id: "asc" }, limit: page.limit + 1 });
    return page.finish(
      rows.map(toRun),
      (run) => [cutoff.toISOString(), run.createdAt.toISOString(), run.id],
      runSize,
    );
  }

  async cancelRun(tenant: string, runId: string, reason: string): Promise<{ run: Run; changed: boolean }> {
    return this.finishRun(tenant, runId, {
      status: "cancelled",
      failureKind: "cancelled",
      failureMessage: reason || "cancelled by request",
    });
  }

  /**
   * The first terminal status wins; later calls change nothing and say so. With a fence, only the
   * runner that holds the run may end it (NOT_LEASE_HOLDER otherwise).
   */
  async finishRun(
    tenant: string,
    runId: string,
    outcome: RunOutcome,
    fence: string | null = null,
  ): Promise<{ run: Run; changed: boolean }> {
    return this.#uow.run(tenant, async (tx) => {
      const finished = await terminate(tx, tenant, runId, outcome, fence);
      if (finished !== undefined) return { run: finished, changed: true };
      const run = await tx.em.findOne(RunEntity, { tenantId: tenant, id: runId });
      if (run === null) throw runNotFound(runId);
      if (fence !== null && !isTerminal(run.status)) throw notLeaseHolder(runId, fence, run.runnerId ?? null);
      return { run: toRun(run), changed: false };
    });
  }

  async deleteRun(tenant: string, runId: string, allowMissing: boolean): Promise<void> {
    await this.#uow.run(tenant, async (tx) => {
      await tx.lockVersion(tenant, RUNS_STREAM);
      const run = await tx.em.findOne(
        RunEntity,
        { tenantId: tenant, id: runId },
        { lockMode: LockMode.PESSIMISTIC_WRITE, fields: ["id", "status", "sessionId"] },
      );
      if (run === null) {
        if (allowMissing) return;
        throw runNotFound(runId);
      }
      if (!isTerminal(run.status)) {
        throw new DomainError(
          "FAILED_PRECONDITION",
          "RUN_ACTIVE",
          `run ${runId} is ${run.status}; cancel or finish it before deleting it`,
          { run_id: runId, status: run.status },
        );
      }
      await tx.em.nativeDelete(RunEventEntity, { tenantId: tenant, runId });
      await tx.em.nativeDelete(RunEventBatchEntity, { tenantId: tenant, runId });
      await tx.em.nativeDelete(CommandEntity, { tenantId: tenant, runId });
      await tx.em.nativeDelete(RunnerJobEntity, { tenantId: tenant, runId });
      await tx.em.nativeDelete(RunEntity, { tenantId: tenant, id: runId });
      if (run.sessionId != null) tx.notice({ topic: SESSION_RUN_CHANGED, tenant, key: run.sessionId });
    });
  }

  /** Stores a progress snapshot; with a fence, only while that runner holds the run. */
  async updateRunProgress(
    tenant: string,
    runId: string,
    snapshot: RunSnapshot,
    fence: string | null = null,
  ): Promise<Run> {
    return this.#uow.run(tenant, async (tx) => {
      const version = await tx.nextVersion(tenant, RUNS_STREAM);
      const updated = await tx.sql.first(
        updateProgress,
        ...snapshotParams(snapshot),
        tenant,
        runId,
        version,
        fence,
      );
      if (updated !== undefined) return toRun(updated.run);
      const run = await tx.em.findOne(
        RunEntity,
        { tenantId: tenant, id: runId },
        { fields: ["id", "status", "runnerId"] },
      );
      if (run === null) throw runNotFound(runId);
      if (fence !== null && !isTerminal(run.status)) throw notLeaseHolder(runId, fence, run.runnerId ?? null);
      throw runIsTerminal(run);
    });
  }

  /**
   * Applies the new run's multitask strategy to the thread's active runs, inside the create's
   * transaction and under the thread's lock, so two racing creates cannot both pass a REJECT.
   */
  async #applyMultitask(tx: Tx, tenant: string, run: NewRun, newRunId: string): Promise<void> {
    const active = await tx.em.find(
      RunEntity,
      { tenantId: tenant, threadId: run.threadId, status: { $in: ACTIVE_STATUSES } },
      { orderBy: { createdAt: "asc" }, fields: ["id"] },
    );
    if (active.length === 0 || run.multitaskStrategy === "enqueue") return;
    if (run.multitaskStrategy === "reject") {
      throw new DomainError(
        "FAILED_PRECONDITION",
        "THREAD_BUSY",
        `thread ${run.threadId} already has an active run (${active[0]?.id}); retry later, or create with multitask strategy ENQUEUE or INTERRUPT`,
        { thread_id: String(run.threadId), active_run_id: String(active[0]?.id) },
      );
    }
    for (const { id } of active) {
      await terminate(tx, tenant, id, {
        status: "cancelled",
        failureKind: "interrupted",
        failureMessage: `interrupted by run ${newRunId}`,
      });
    }
  }
}

/**
 * Moves an active run to a terminal status and appends its terminal event in the same
 * transaction, so streams always end; the run's open commands are cancelled with it. Returns
 * undefined when the run is missing or already terminal (the first terminal status wins).
 */
export async function terminate(
  tx: Tx,
  tenant: string,
  runId: string,
  outcome: RunOutcome,
  fence: string | null = null,
): Promise<Run | undefined> {
  const version = await tx.nextVersion(tenant, RUNS_STREAM);
  const updated = await tx.sql.first(
    terminateRun,
    ...snapshotParams(outcome),
    outcome.status,
    outcome.failureKind,
    outcome.failureMessage,
    tenant,
    runId,
    version,
    fence,
  );
  if (updated === undefined) return undefined;
  const run = toRun(updated.run);
  if (run.sessionId !== null) tx.notice({ topic: SESSION_RUN_CHANGED, tenant, key: run.sessionId });
  const payload = {
    status: outcome.status,
    failure_kind: outcome.failureKind ?? "",
    failure_message: outcome.failureMessage ?? "",
  };
  await tx.sql.all(
    cancelOpenCommands,
    tenant,
    runId,
    "run_ended",
    `the run ended ${outcome.status} before the command did`,
  );
  await tx.sql.all(insertTerminalEvent, tenant, runId, run.lastSeq, JSON.stringify(payload), run.updatedAt);
  tx.publish({ channel: RUN_EVENTS_CHANNEL, tenant, key: runId, seq: run.lastSeq });
  // A run queued behind this one on its thread (ENQUEUE) may be claimed now.
  if (run.threadId !== null) tx.publish({ channel: PENDING_RUNS_CHANNEL, tenant, key: "", seq: version });
  return run;
}

function snapshotParams(snapshot: RunSnapshot) {
  const { usage } = snapshot;
  return [
    usage?.inputTokens ?? null,
    usage?.outputTokens ?? null,
    usage?.totalTokens ?? null,
    usage?.llmCallCount ?? null,
    usage?.leadAgentTokens ?? null,
    usage?.subagentTokens ?? null,
    usage?.middlewareTokens ?? null,
    snapshot.messageCount ?? null,
    snapshot.firstHumanMessage ?? null,
    snapshot.lastAiMessage ?? null,
    snapshot.modelName ?? null,
  ] as const;
}

/** The stored row as the aggregate's domain type. */
export function toRun(row: RunRow): Run {
  return {
    tenantId: row.tenantId,
    id: row.id,
    requestId: row.requestId ?? null,
    requestHash: row.requestHash ?? null,
    threadId: row.threadId ?? null,
    sessionId: row.sessionId ?? null,
    assistantId: row.assistantId ?? null,
    userId: row.userId ?? null,
    project: row.project ?? null,
    modelName: row.modelName ?? null,
    backendProfile: row.backendProfile ?? null,
    metadata: row.metadata,
    input: row.input,
    multitaskStrategy: row.multitaskStrategy as MultitaskStrategy,
    labels: row.labels ?? {},
    leaseLostPolicy: row.leaseLostPolicy === "requeue" ? "requeue" : "fail",
    status: row.status as RunStatus,
    failureKind: row.failureKind ?? null,
    failureMessage: row.failureMessage ?? null,
    runnerId: row.runnerId ?? null,
    leaseExpiresAt: row.leaseExpiresAt ?? null,
    usage: {
      inputTokens: BigInt(row.inputTokens),
      outputTokens: BigInt(row.outputTokens),
      totalTokens: BigInt(row.totalTokens),
      llmCallCount: BigInt(row.llmCallCount),
      leadAgentTokens: BigInt(row.leadAgentTokens),
      subagentTokens: BigInt(row.subagentTokens),
      middlewareTokens: BigInt(row.middlewareTokens),
    },
    messageCount: BigInt(row.messageCount),
    firstHumanMessage: row.firstHumanMessage ?? null,
    lastAiMessage: row.lastAiMessage ?? null,
    lastSeq: Number(row.lastSeq),
    lastCommandSeq: Number(row.lastCommandSeq),
    version: Number(row.version),
    createdAt: row.createdAt,
    updatedAt: row.updatedAt,
    startedAt: row.startedAt ?? null,
    finishedAt: row.finishedAt ?? null,
  };
}
