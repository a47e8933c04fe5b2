import type { EntityManager } from "@mikro-orm/postgresql";
import { v7 as uuidv7 } from "uuid";
import type { Limits } from "../config.ts";
import type { Database } from "../db/database.ts";
import { RunEntity, type RunRow } from "../db/entities.ts";
import { DomainError, runNotFound } from "../errors.ts";
import type { Change, ChangeFeed } from "../feed/feed.ts";
import { clampPageSize, decodePageToken, encodePageToken } from "./page-token.ts";
import type { Redactor } from "./redact.ts";
import { stableHash } from "./stable-hash.ts";

export type { RunRow };

export const RUN_EVENTS_CHANNEL = "run_events";
export const TERMINAL_EVENT_TYPE = "terminal_status";

const ACTIVE_STATUSES = ["pending", "claimed", "running"] as const;
const TERMINAL_STATUSES = ["completed", "failed", "blocked", "cancelled"] as const;
export type TerminalStatus = (typeof TERMINAL_STATUSES)[number];
export type RunStatus = (typeof ACTIVE_STATUSES)[number] | TerminalStatus;
const sqlList = (values: readonly string[]) => `(${values.map((v) => `'${v}'`).join(",")})`;
const ACTIVE_SQL = sqlList(ACTIVE_STATUSES);
const TERMINAL_SQL = sqlList(TERMINAL_STATUSES);

export const isTerminal = (status: string): status is TerminalStatus =>
  (TERMINAL_STATUSES as readonly string[]).includes(status);

export type MultitaskStrategy = "reject" | "enqueue" | "interrupt";

export interface NewRun {
  threadId: string | null;
  sessionId: string | null;
  assistantId: string | null;
  userId: string | null;
  project: string | null;
  modelName: string | null;
  backendProfile: string | null;
  metadata: Record<string, unknown>;
  input: Record<string, unknown>;
  multitaskStrategy: MultitaskStrategy;
}

export interface TokenUsage {
  inputTokens: number;
  outputTokens: number;
  totalTokens: number;
  llmCallCount: number;
  leadAgentTokens: number;
  subagentTokens: number;
  middlewareTokens: number;
}

/** A progress or completion snapshot; undefined fields keep their stored value. */
export interface RunSnapshot {
  usage?: TokenUsage;
  messageCount?: number;
  firstHumanMessage?: string;
  lastAiMessage?: string;
  modelName?: string;
}

export interface RunOutcome extends RunSnapshot {
  status: TerminalStatus;
  failureKind: string | null;
  failureMessage: string | null;
}

export interface RunFilter {
  threadId?: string;
  sessionId?: string;
  userId?: string;
  status?: RunStatus;
}

export interface Page<T> {
  items: T[];
  nextPageToken: string;
}

export interface StoredEvent {
  runId: string;
  seq: number;
  type: string;
  payload: Record<string, unknown>;
  /** Size of the payload as stored JSON text. */
  payloadBytes: number;
  createdAt: Date;
}

export interface NewEvent {
  type: string;
  payload: Record<string, unknown>;
}

export interface AppendResult {
  firstSeq: number;
  lastSeq: number;
  createdAt: Date;
}

export interface ThreadUsage {
  totalRuns: number;
  usage: TokenUsage;
  byModel: Map<string, { runs: number; inputTokens: number; outputTokens: number; totalTokens: number }>;
}

const USAGE_COLUMNS: Array<[keyof TokenUsage, string]> = [
  ["inputTokens", "input_tokens"],
  ["outputTokens", "output_tokens"],
  ["totalTokens", "total_tokens"],
  ["llmCallCount", "llm_call_count"],
  ["leadAgentTokens", "lead_agent_tokens"],
  ["subagentTokens", "subagent_tokens"],
  ["middlewareTokens", "middleware_tokens"],
];

/** Thrown inside a transaction to roll it back when a concurrent idempotent write won the race. */
class LostIdempotencyRace extends Error {}

type Position = [createdAtIso: string, id: string];
const isPosition = (p: unknown): p is Position =>
  Array.isArray(p) && p.length === 2 && p.every((v) => typeof v === "string");
type InflightPosition = [cutoffIso: string, createdAtIso: string, id: string];
const isInflightPosition = (p: unknown): p is InflightPosition =>
  Array.isArray(p) && p.length === 3 && p.every((v) => typeof v === "string");

/**
 * Roughly how much run JSON one list response may carry. gRPC clients refuse messages over 4 MiB
 * by default, and a run may hold up to a megabyte of metadata and input.
 */
const LIST_RESPONSE_BUDGET_BYTES = 3 * 1024 * 1024;

/** The leading runs whose JSON fits the response budget (at least one). */
function fitResponse(rows: RunRow[]): RunRow[] {
  let bytes = 0;
  for (const [index, row] of rows.entries()) {
    bytes += JSON.stringify(row.metadata).length + JSON.stringify(row.input).length + 512;
    if (bytes > LIST_RESPONSE_BUDGET_BYTES && index > 0) return rows.slice(0, index);
  }
  return rows;
}

export interface RunStoreOptions {
  limits: Limits;
  redact: Redactor;
}

/**
 * The run aggregate: runs and their event logs. Every method takes the tenant first and every
 * statement filters by it. Each method is one transaction; the changes it makes to event logs are
 * handed to the feed inside the transaction and after the commit.
 *
 * Seqs are allocated by incrementing runs.last_seq in the same statement that inserts the events.
 * That UPDATE holds the run's row lock until commit, so appends to one run are serialized in commit
 * order: seq N+1 can never become visible before seq N, and a failed append leaves no gap.
 */
export class RunStore {
  readonly #db: Database;
  readonly #feed: ChangeFeed;
  readonly #limits: Limits;
  readonly #redact: Redactor;

  constructor(db: Database, feed: ChangeFeed, options: RunStoreOptions) {
    this.#db = db;
    this.#feed = feed;
    this.#limits = options.limits;
    this.#redact = options.redact;
  }

  async createRun(tenant: string, run: NewRun, requestId: string | null): Promise<RunRow> {
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
        return await this.#transaction(async (tx, changes) => {
          if (run.threadId !== null) {
            // Serializes creates on one thread so that the multitask check and the insert are atomic.
            await tx.execute("select pg_advisory_xact_lock(hashtextextended(?, 0))", [
              `runs/${tenant}/${run.threadId}`,
            ]);
          }
          if (requestId !== null) {
            const existing = await this.#findByRequestId(tx, tenant, requestId);
            if (existing !== undefined) return this.#sameRequest(existing, requestHash, requestId);
          }
          const id = uuidv7();
          if (run.threadId !== null) await this.#applyMultitask(tx, changes, tenant, run, id);
          const rows = await tx.execute<Record<string, unknown>[]>(
            `insert into runs (tenant_id, id, request_id, request_hash, thread_id, session_id, assistant_id, user_id,
               project, model_name, backend_profile, metadata, input, multitask_strategy, status)
             values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?::jsonb, ?::jsonb, ?, 'pending')
             on conflict (tenant_id, request_id) do nothing
             returning *`,
            [
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
            ],
          );
          const row = rows[0];
          if (row === undefined) throw new LostIdempotencyRace();
          return this.#toRun(tx, row);
        });
      } catch (err) {
        // A concurrent create with the same request_id committed first; the next attempt finds it.
        if (err instanceof LostIdempotencyRace && attempt === 0) continue;
        throw err;
      }
    }
  }

  async getRun(tenant: string, runId: string): Promise<RunRow> {
    const run = await this.#db.orm.em.fork().findOne(RunEntity, { tenantId: tenant, id: runId });
    if (run === null) throw runNotFound(runId);
    return run;
  }

  async listRuns(
    tenant: string,
    filter: RunFilter,
    pageSize: number,
    pageToken: string,
  ): Promise<Page<RunRow>> {
    const limit = clampPageSize(pageSize, 50, 500);
    const after = decodePageToken("runs", filter, pageToken, isPosition);
    const where: Record<string, unknown> = { tenantId: tenant };
    if (filter.threadId !== undefined) where.threadId = filter.threadId;
    if (filter.sessionId !== undefined) where.sessionId = filter.sessionId;
    if (filter.userId !== undefined) where.userId = filter.userId;
    if (filter.status !== undefined) where.status = filter.status;
    if (after !== undefined) {
      const createdAt = new Date(after[0]);
      where.$or = [{ createdAt: { $lt: createdAt } }, { createdAt, id: { $lt: after[1] } }];
    }
    const rows = await this.#db.orm.em
      .fork()
      .find(RunEntity, where, { orderBy: { createdAt: "desc", id: "desc" }, limit: limit + 1 });
    return this.#page("runs", filter, rows, limit);
  }

  /**
   * Active runs created before `createdBefore` (now when undefined), oldest first. The cut-off of
   * the first page travels in the token, so later pages neither move it nor need it repeated.
   */
  async listInflightRuns(
    tenant: string,
    createdBefore: Date | undefined,
    pageSize: number,
    pageToken: string,
  ): Promise<Page<RunRow>> {
    const limit = clampPageSize(pageSize, 50, 500);
    const filters = { createdBefore: createdBefore?.toISOString() ?? null };
    const after = decodePageToken("inflight", filters, pageToken, isInflightPosition);
    const cutoff = after !== undefined ? new Date(after[0]) : (createdBefore ?? new Date());
    const where: Record<string, unknown> = {
      tenantId: tenant,
      status: { $in: ACTIVE_STATUSES },
      createdAt: { $lt: cutoff },
    };
    if (after !== undefined) {
      const createdAt = new Date(after[1]);
      where.$and = [{ $or: [{ createdAt: { $gt: createdAt } }, { createdAt, id: { $gt: after[2] } }] }];
    }
    const rows = await this.#db.orm.em
      .fork()
      .find(RunEntity, where, { orderBy: { createdAt: "asc", id: "asc" }, limit: limit + 1 });
    const items = fitResponse(rows.slice(0, limit));
    const last = items.at(-1);
    const nextPageToken =
      rows.length > items.length && last !== undefined
        ? encodePageToken<InflightPosition>("inflight", filters, [
            cutoff.toISOString(),
            last.createdAt.toISOString(),
            last.id,
          ])
        : "";
    return { items, nextPageToken };
  }

  async cancelRun(tenant: string, runId: string, reason: string): Promise<{ run: RunRow; changed: boolean }> {
    return this.finishRun(tenant, runId, {
      status: "cancelled",
      failureKind: "cancelled",
      failureMessage: reason || "cancelled by request",
    });
  }

  async finishRun(
    tenant: string,
    runId: string,
    outcome: RunOutcome,
  ): Promise<{ run: RunRow; changed: boolean }> {
    return this.#transaction(async (tx, changes) => {
      const finished = await this.#terminate(tx, changes, tenant, runId, outcome);
      if (finished !== undefined) return { run: finished, changed: true };
      return { run: await this.#requireRun(tx, tenant, runId), changed: false };
    });
  }

  async deleteRun(tenant: string, runId: string, allowMissing: boolean): Promise<void> {
    await this.#transaction(async (tx) => {
      const rows = await tx.execute<Array<{ status: string }>>(
        "select status from runs where tenant_id = ? and id = ? for update",
        [tenant, runId],
      );
      const row = rows[0];
      if (row === undefined) {
        if (allowMissing) return;
        throw runNotFound(runId);
      }
      if (!isTerminal(row.status)) {
        throw new DomainError(
          "FAILED_PRECONDITION",
          "RUN_ACTIVE",
          `run ${runId} is ${row.status}; cancel or finish it before deleting it`,
          { run_id: runId, status: row.status },
        );
      }
      await tx.execute("delete from run_events where tenant_id = ? and run_id = ?", [tenant, runId]);
      await tx.execute("delete from run_event_batches where tenant_id = ? and run_id = ?", [tenant, runId]);
      await tx.execute("delete from runs where tenant_id = ? and id = ?", [tenant, runId]);
    });
  }

  async updateRunProgress(tenant: string, runId: string, snapshot: RunSnapshot): Promise<RunRow> {
    return this.#transaction(async (tx) => {
      const { sets, params } = snapshotAssignments(snapshot);
      const rows = await tx.execute<Record<string, unknown>[]>(
        `update runs set ${sets.join(", ")}${sets.length > 0 ? "," : ""}
           status = case when status in ('pending','claimed') then 'running' else status end,
           started_at = coalesce(started_at, current_timestamp(3)),
           updated_at = clock_timestamp()
         where tenant_id = ? and id = ? and status in ${ACTIVE_SQL}
         returning *`,
        [...params, tenant, runId],
      );
      const row = rows[0];
      if (row !== undefined) return this.#toRun(tx, row);
      const run = await this.#requireRun(tx, tenant, runId);
      throw runIsTerminal(run);
    });
  }

  async getThreadUsage(tenant: string, threadId: string, includeActive: boolean): Promise<ThreadUsage> {
    const rows = await this.#db.orm.em.fork().execute<Array<Record<string, unknown>>>(
      `select coalesce(model_name, '') as model, count(*) as runs,
         ${USAGE_COLUMNS.map(([, column]) => `sum(${column}) as ${column}`).join(", ")}
       from runs
       where tenant_id = ? and thread_id = ? and (status in ${TERMINAL_SQL} or ?)
       group by coalesce(model_name, '')`,
      [tenant, threadId, includeActive],
    );
    const usage = zeroUsage();
    const byModel: ThreadUsage["byModel"] = new Map();
    let totalRuns = 0;
    for (const row of rows) {
      const runs = Number(row.runs);
      totalRuns += runs;
      for (const [field, column] of USAGE_COLUMNS) usage[field] += Number(row[column] ?? 0);
      byModel.set(String(row.model), {
        runs,
        inputTokens: Number(row.input_tokens ?? 0),
        outputTokens: Number(row.output_tokens ?? 0),
        totalTokens: Number(row.total_tokens ?? 0),
      });
    }
    return { totalRuns, usage, byModel };
  }

  async appendEvents(
    tenant: string,
    runId: string,
    events: readonly NewEvent[],
    requestId: string | null,
  ): Promise<AppendResult> {
    const batchJson = this.#encodeBatch(events);
    const requestHash = requestId === null ? null : stableHash(events);
    if (requestId !== null) {
      const previous = await this.#findBatch(this.#db.orm.em.fork(), tenant, runId, requestId, requestHash);
      if (previous !== undefined) return previous;
    }
    try {
      return await this.#transaction(async (tx, changes) => {
        // One statement: lock the run and reserve the seqs (the UPDATE), then insert the events
        // with them. A run that is terminal or missing updates nothing and so inserts nothing.
        // PostgreSQL runs a data-modifying CTE whether or not the final SELECT reads it.
        const rows = await tx.execute<Array<{ last_seq: unknown; updated_at: unknown }>>(
          `with bumped as (
             update runs set last_seq = last_seq + ?, updated_at = clock_timestamp()
             where tenant_id = ? and id = ? and status in ${ACTIVE_SQL}
             returning last_seq, updated_at
           ), inserted as (
             insert into run_events (tenant_id, run_id, seq, type, payload, created_at)
             select ?, ?, b.last_seq - ? + e.ord, e.value->>'type', e.value->'payload', b.updated_at
             from bumped b cross join lateral jsonb_array_elements(?::jsonb) with ordinality as e(value, ord)
           )
           select last_seq, updated_at from bumped`,
          [events.length, tenant, runId, tenant, runId, events.length, batchJson],
        );
        const row = rows[0];
        if (row === undefined) {
          const run = await this.#requireRun(tx, tenant, runId);
          // A retry of an append that committed before the run ended answers with that append.
          const previous =
            requestId === null ? undefined : await this.#findBatch(tx, tenant, runId, requestId, requestHash);
          if (previous !== undefined) return previous;
          throw runIsTerminal(run);
        }
        const lastSeq = Number(row.last_seq);
        const result = { firstSeq: lastSeq - events.length + 1, lastSeq, createdAt: toDate(row.updated_at) };
        if (requestId !== null) {
          const recorded = await tx.execute<unknown[]>(
            `insert into run_event_batches (tenant_id, run_id, request_id, request_hash, first_seq, last_seq)
             values (?, ?, ?, ?, ?, ?) on conflict do nothing returning 1`,
            [tenant, runId, requestId, requestHash, result.firstSeq, result.lastSeq],
          );
          if (recorded.length === 0) throw new LostIdempotencyRace();
        }
        changes.push({ channel: RUN_EVENTS_CHANNEL, tenant, key: runId, seq: lastSeq });
        return result;
      });
    } catch (err) {
      if (!(err instanceof LostIdempotencyRace) || requestId === null) throw err;
      const winner = await this.#findBatch(this.#db.orm.em.fork(), tenant, runId, requestId, requestHash);
      if (winner === undefined) throw new Error("idempotent append lost a race to a batch that is gone");
      return winner;
    }
  }

  /**
   * Events after `afterSeq` in seq order, optionally of some types only: at most `limit` events and,
   * past the first one, at most `maxBytes` of payload. `more` says whether the log has more after
   * the page. NOT_FOUND when the run does not exist.
   */
  async listEvents(
    tenant: string,
    runId: string,
    afterSeq: number,
    page: { limit: number; maxBytes: number },
    types: readonly string[] = [],
  ): Promise<{ events: StoredEvent[]; more: boolean }> {
    const em = this.#db.orm.em.fork();
    const result = await this.#readEvents(em, tenant, runId, afterSeq, page, types);
    if (result.events.length === 0) await this.#requireRun(em, tenant, runId);
    return result;
  }

  /** Like listEvents, without checking that the run exists (the stream hub's hot path). */
  async readEvents(
    tenant: string,
    runId: string,
    afterSeq: number,
    page: { limit: number; maxBytes: number },
  ): Promise<StoredEvent[]> {
    return (await this.#readEvents(this.#db.orm.em.fork(), tenant, runId, afterSeq, page, [])).events;
  }

  /** The run's newest committed seq. NOT_FOUND when the run does not exist. */
  async lastSeq(tenant: string, runId: string): Promise<number> {
    const rows = await this.#db.orm.em
      .fork()
      .execute<Array<{ last_seq: unknown }>>("select last_seq from runs where tenant_id = ? and id = ?", [
        tenant,
        runId,
      ]);
    if (rows[0] === undefined) throw runNotFound(runId);
    return Number(rows[0].last_seq);
  }

  async #readEvents(
    em: EntityManager,
    tenant: string,
    runId: string,
    afterSeq: number,
    page: { limit: number; maxBytes: number },
    types: readonly string[],
  ): Promise<{ events: StoredEvent[]; more: boolean }> {
    const typeFilter = types.length > 0 ? "and type in (select jsonb_array_elements_text(?::jsonb))" : "";
    // The innermost query takes the next limit + 1 rows by the primary key (one more than the page,
    // to know whether more exist); the outer ones keep the first `limit` rows whose preceding
    // payloads fit in maxBytes (the first row always does), so a page stays near maxBytes however
    // large single events are.
    const rows = await em.execute<
      Array<{
        seq: unknown;
        type: string;
        payload: string;
        bytes: unknown;
        created_at: unknown;
        available: unknown;
      }>
    >(
      `select seq, type, payload, bytes, created_at, available from (
         select *,
           sum(bytes) over (order by seq) - bytes as bytes_before,
           row_number() over (order by seq) as n,
           count(*) over () as available
         from (
           select seq, type, payload::text as payload, octet_length(payload::text) as bytes, created_at
           from run_events
           where tenant_id = ? and run_id = ? and seq > ? ${typeFilter}
           order by seq limit ?
         ) next_rows
       ) sized
       where bytes_before < ? and n <= ?
       order by seq`,
      [
        tenant,
        runId,
        afterSeq,
        ...(types.length > 0 ? [JSON.stringify(types)] : []),
        page.limit + 1,
        page.maxBytes,
        page.limit,
      ],
    );
    const events = rows.map((row) => ({
      runId,
      seq: Number(row.seq),
      type: row.type,
      payload: JSON.parse(row.payload) as Record<string, unknown>,
      payloadBytes: Number(row.bytes),
      createdAt: toDate(row.created_at),
    }));
    return { events, more: rows.length > 0 && Number(rows[0]?.available) > rows.length };
  }

  /**
   * Moves an active run to a terminal status and appends its terminal event in the same
   * transaction. Returns undefined when the run is missing or already terminal (first one wins).
   */
  async #terminate(
    tx: EntityManager,
    changes: Change[],
    tenant: string,
    runId: string,
    outcome: RunOutcome,
  ): Promise<RunRow | undefined> {
    const { sets, params } = snapshotAssignments(outcome);
    const rows = await tx.execute<Record<string, unknown>[]>(
      `update runs set ${sets.join(", ")}${sets.length > 0 ? "," : ""}
         status = ?, failure_kind = ?, failure_message = ?, runner_id = null, lease_expires_at = null,
         last_seq = last_seq + 1, finished_at = clock_timestamp(), updated_at = clock_timestamp()
       where tenant_id = ? and id = ? and status in ${ACTIVE_SQL}
       returning *`,
      [...params, outcome.status, outcome.failureKind, outcome.failureMessage, tenant, runId],
    );
    const row = rows[0];
    if (row === undefined) return undefined;
    const run = this.#toRun(tx, row);
    const payload = {
      status: outcome.status,
      failure_kind: outcome.failureKind ?? "",
      failure_message: outcome.failureMessage ?? "",
    };
    await tx.execute(
      "insert into run_events (tenant_id, run_id, seq, type, payload, created_at) values (?, ?, ?, ?, ?::jsonb, ?)",
      [tenant, runId, run.lastSeq, TERMINAL_EVENT_TYPE, JSON.stringify(payload), run.updatedAt],
    );
    changes.push({ channel: RUN_EVENTS_CHANNEL, tenant, key: runId, seq: run.lastSeq });
    return run;
  }

  async #applyMultitask(tx: EntityManager, changes: Change[], tenant: string, run: NewRun, newRunId: string) {
    const active = await tx.execute<Array<{ id: string }>>(
      `select id from runs where tenant_id = ? and thread_id = ? and status in ${ACTIVE_SQL} order by created_at`,
      [tenant, run.threadId],
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
      await this.#terminate(tx, changes, tenant, id, {
        status: "cancelled",
        failureKind: "interrupted",
        failureMessage: `interrupted by run ${newRunId}`,
      });
    }
  }

  #encodeBatch(events: readonly NewEvent[]): string {
    const { maxBatchEvents, maxEventBytes, maxBatchBytes } = this.#limits;
    if (events.length > maxBatchEvents) {
      throw new DomainError(
        "RESOURCE_EXHAUSTED",
        "TOO_MANY_EVENTS",
        `a batch holds at most ${maxBatchEvents} events, this one has ${events.length}; split it`,
        { events: String(events.length), limit: String(maxBatchEvents) },
      );
    }
    let total = 0;
    const encoded = events.map((event, index) => {
      if (event.type === TERMINAL_EVENT_TYPE) {
        throw new DomainError(
          "INVALID_ARGUMENT",
          "RESERVED_EVENT_TYPE",
          `events[${index}].type "${TERMINAL_EVENT_TYPE}" is written by FinishRun and CancelRun only`,
          { index: String(index) },
        );
      }
      const payload = JSON.stringify(this.#redact(event.payload));
      const bytes = Buffer.byteLength(payload);
      if (bytes > maxEventBytes) {
        throw new DomainError(
          "RESOURCE_EXHAUSTED",
          "PAYLOAD_TOO_LARGE",
          `events[${index}].payload takes ${bytes} bytes, more than the limit of ${maxEventBytes}`,
          { index: String(index), bytes: String(bytes), limit: String(maxEventBytes) },
        );
      }
      total += bytes;
      return `{"type":${JSON.stringify(event.type)},"payload":${payload}}`;
    });
    if (total > maxBatchBytes) {
      throw new DomainError(
        "RESOURCE_EXHAUSTED",
        "PAYLOAD_TOO_LARGE",
        `the batch's payloads take ${total} bytes, more than the limit of ${maxBatchBytes}; split it`,
        { bytes: String(total), limit: String(maxBatchBytes) },
      );
    }
    return `[${encoded.join(",")}]`;
  }

  async #findBatch(
    em: EntityManager,
    tenant: string,
    runId: string,
    requestId: string,
    requestHash: string | null,
  ): Promise<AppendResult | undefined> {
    const rows = await em.execute<Array<Record<string, unknown>>>(
      `select first_seq, last_seq, request_hash, created_at from run_event_batches
       where tenant_id = ? and run_id = ? and request_id = ?`,
      [tenant, runId, requestId],
    );
    const row = rows[0];
    if (row === undefined) return undefined;
    if (row.request_hash !== requestHash) throw requestIdReused(requestId);
    return {
      firstSeq: Number(row.first_seq),
      lastSeq: Number(row.last_seq),
      createdAt: toDate(row.created_at),
    };
  }

  async #findByRequestId(tx: EntityManager, tenant: string, requestId: string): Promise<RunRow | undefined> {
    const rows = await tx.execute<Record<string, unknown>[]>(
      "select * from runs where tenant_id = ? and request_id = ?",
      [tenant, requestId],
    );
    return rows[0] === undefined ? undefined : this.#toRun(tx, rows[0]);
  }

  #sameRequest(existing: RunRow, requestHash: string | null, requestId: string): RunRow {
    if (existing.requestHash !== requestHash) throw requestIdReused(requestId);
    return existing;
  }

  async #requireRun(em: EntityManager, tenant: string, runId: string): Promise<RunRow> {
    const rows = await em.execute<Record<string, unknown>[]>(
      "select * from runs where tenant_id = ? and id = ?",
      [tenant, runId],
    );
    if (rows[0] === undefined) throw runNotFound(runId);
    return this.#toRun(em, rows[0]);
  }

  #toRun(em: EntityManager, row: Record<string, unknown>): RunRow {
    return em.map(RunEntity, row);
  }

  #page(kind: string, filters: unknown, rows: RunRow[], limit: number): Page<RunRow> {
    const items = fitResponse(rows.slice(0, limit));
    const last = items.at(-1);
    const nextPageToken =
      rows.length > items.length && last !== undefined
        ? encodePageToken<Position>(kind, filters, [last.createdAt.toISOString(), last.id])
        : "";
    return { items, nextPageToken };
  }

  async #transaction<R>(work: (tx: EntityManager, changes: Change[]) => Promise<R>): Promise<R> {
    const changes: Change[] = [];
    const result = await this.#db.orm.em.fork().transactional(async (tx) => {
      changes.length = 0;
      const value = await work(tx, changes);
      if (changes.length > 0) await this.#feed.stage(tx, changes);
      return value;
    });
    if (changes.length > 0) this.#feed.committed(changes);
    return result;
  }
}

function snapshotAssignments(snapshot: RunSnapshot): { sets: string[]; params: unknown[] } {
  const sets: string[] = [];
  const params: unknown[] = [];
  const assign = (column: string, value: unknown) => {
    if (value === undefined) return;
    sets.push(`${column} = ?`);
    params.push(value);
  };
  if (snapshot.usage !== undefined) {
    for (const [field, column] of USAGE_COLUMNS) assign(column, snapshot.usage[field]);
  }
  assign("message_count", snapshot.messageCount);
  assign("first_human_message", snapshot.firstHumanMessage);
  assign("last_ai_message", snapshot.lastAiMessage);
  assign("model_name", snapshot.modelName);
  return { sets, params };
}

function runIsTerminal(run: RunRow): DomainError {
  return new DomainError("FAILED_PRECONDITION", "RUN_TERMINAL", `run ${run.id} is already ${run.status}`, {
    run_id: run.id,
    status: run.status,
  });
}

function requestIdReused(requestId: string): DomainError {
  return new DomainError(
    "ALREADY_EXISTS",
    "REQUEST_ID_REUSED",
    `request_id ${requestId} was already used with a different request; use a new request_id for a new request`,
    { request_id: requestId },
  );
}

function zeroUsage(): TokenUsage {
  return {
    inputTokens: 0,
    outputTokens: 0,
    totalTokens: 0,
    llmCallCount: 0,
    leadAgentTokens: 0,
    subagentTokens: 0,
    middlewareTokens: 0,
  };
}

/** PostgreSQL (through pg) returns timestamptz as text, PGlite as Date. */
function toDate(value: unknown): Date {
  return value instanceof Date ? value : new Date(String(value));
}
