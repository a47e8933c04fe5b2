import type { EntityManager } from "@mikro-orm/postgresql";
import type { RunLimits } from "../../config/index.ts";
import { DomainError } from "../../core/errors.ts";
import { stableHash } from "../../core/hash.ts";
import { isStringTuple, type ListSpec, type Page, type PageRequest, type Paging } from "../../core/paging.ts";
import type { Redactor } from "../../core/redact.ts";
import type { Database } from "../../db/database.ts";
import type { UnitOfWork } from "../../db/unit-of-work.ts";
import { RunEntity } from "../runs/entities.ts";
import { notLeaseHolder, requestIdReused, runIsTerminal, runNotFound } from "../runs/errors.ts";
import { isTerminal, RUNS_STREAM } from "../runs/model.ts";
import { type AppendCall, AppendGroups, type AppendResult, RUN_EVENTS_CHANNEL } from "./appends.ts";
import { RunEventBatchEntity } from "./entities.ts";
import { SERVER_EVENT_PREFIX } from "./server-events.ts";
import { appendEvents, lastSeq, latestClaimBy, readEvents, recordBatch } from "./sql.ts";

export { RUN_EVENTS_CHANNEL };
export const TERMINAL_EVENT_TYPE = "terminal_status";

export interface NewEvent {
  type: string;
  payload: Record<string, unknown>;
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

export type { AppendResult };

export interface EventPage {
  events: StoredEvent[];
  /** The log has more events after the page. */
  more: boolean;
}

/** Positions are seqs, as decimal text. */
const EVENT_LIST: ListSpec<string[]> = {
  name: "run_events",
  defaultSize: 100,
  maxSize: 1000,
  isPosition: isStringTuple(1),
};
/** One ListRunEvents page carries about this much payload, below gRPC's common 4 MiB limit. */
const EVENT_PAGE_BYTES = 3 * 1024 * 1024;

/** Most appends one combined statement carries, and most payload bytes. */
const MAX_APPEND_GROUP = 128;
const MAX_APPEND_GROUP_BYTES = 16 * 1024 * 1024;

export interface EventStoreOptions {
  limits: RunLimits;
  redact: Redactor;
  /** Combined append statements in flight at once. */
  writeSlots: number;
}

/** Thrown inside a transaction to roll it back when a concurrent idempotent append won the race. */
class LostIdempotencyRace extends Error {}

/**
 * The event log of every run: append (gapless seqs, see sql.ts appendEvents), page, and read for
 * the stream hub. Every method takes the tenant first and every statement filters by it.
 */
export class EventStore {
  readonly #db: Database;
  readonly #uow: UnitOfWork;
  readonly #paging: Paging;
  readonly #limits: RunLimits;
  readonly #redact: Redactor;

  readonly #appends: AppendGroups;

  constructor(db: Database, uow: UnitOfWork, paging: Paging, options: EventStoreOptions) {
    this.#db = db;
    this.#uow = uow;
    this.#paging = paging;
    this.#limits = options.limits;
    this.#redact = options.redact;
    this.#appends = new AppendGroups(db, uow, {
      slots: options.writeSlots,
      maxGroup: MAX_APPEND_GROUP,
      maxGroupBytes: MAX_APPEND_GROUP_BYTES,
      appendAlone: (call) => this.#appendAlone(call),
    });
  }

  /**
   * Appends a batch with the next seqs of the run. Concurrent appends are combined into one
   * statement (appends.ts); each keeps its own seqs and its own error.
   */
  async append(
    tenant: string,
    runId: string,
    events: readonly NewEvent[],
    requestId: string | null,
    runnerId: string | null = null,
  ): Promise<AppendResult> {
    const batchJson = this.#encodeBatch(events);
    const requestHash = requestId === null ? null : stableHash(events);
    return this.#appends.append({
      tenant,
      runId,
      count: events.length,
      batchJson,
      requestId,
      requestHash,
      runnerId,
    });
  }

  /** How the append path combined calls, for tests and benchmarks. */
  appendStats(): { groups: number; calls: number } {
    return this.#appends.stats();
  }

  /** One append in a transaction of its own: the path of calls whose combined statement failed. */
  async #appendAlone(call: AppendCall): Promise<AppendResult> {
    const { tenant, runId, batchJson, requestId, requestHash, runnerId } = call;
    const events = { length: call.count };
    if (requestId !== null) {
      const previous = await findBatch(this.#db.orm.em.fork(), tenant, runId, requestId, requestHash);
      if (previous !== undefined) return previous;
    }
    try {
      return await this.#uow.run(tenant, async (tx) => {
        // Lock order (db/unit-of-work.ts): the tenant's runs version before the run's row.
        await tx.lockVersion(tenant, RUNS_STREAM);
        const appended = await tx.sql.first(appendEvents, events.length, tenant, runId, batchJson, runnerId);
        if (appended === undefined) {
          const run = await tx.em.findOne(
            RunEntity,
            { tenantId: tenant, id: runId },
            { fields: ["id", "status", "runnerId"] },
          );
          if (run === null) throw runNotFound(runId);
          if (runnerId !== null && !isTerminal(run.status) && run.runnerId !== runnerId) {
            throw notLeaseHolder(runId, runnerId, run.runnerId ?? null);
          }
          // A retry of an append that committed before the run ended answers with that append.
          const previous =
            requestId === null ? undefined : await findBatch(tx.em, tenant, runId, requestId, requestHash);
          if (previous !== undefined) return previous;
          throw runIsTerminal(run);
        }
        const result = {
          firstSeq: appended.lastSeq - events.length + 1,
          lastSeq: appended.lastSeq,
          createdAt: appended.createdAt,
        };
        if (requestId !== null && requestHash !== null) {
          const recorded = await tx.sql.first(
            recordBatch,
            tenant,
            runId,
            requestId,
            requestHash,
            result.firstSeq,
            result.lastSeq,
          );
          if (recorded === undefined) throw new LostIdempotencyRace();
        }
        tx.publish({ channel: RUN_EVENTS_CHANNEL, tenant, key: runId, seq: result.lastSeq });
        return result;
      });
    } catch (err) {
      if (!(err instanceof LostIdempotencyRace) || requestId === null) throw err;
      const winner = await findBatch(this.#db.orm.em.fork(), tenant, runId, requestId, requestHash);
      if (winner === undefined) throw new Error("idempotent append lost a race to a batch that is gone");
      return winner;
    }
  }

  /**
   * A page of the run's events after `afterSeq`, in seq order, optionally of some types only:
   * at most the page size and, past the first event, about 3 MiB of payload. NOT_FOUND when the
   * run does not exist.
   */
  async list(
    tenant: string,
    runId: string,
    filter: { afterSeq: number; types: readonly string[] },
    request: PageRequest,
  ): Promise<Page<StoredEvent>> {
    const filters = { runId, afterSeq: String(filter.afterSeq), types: [...filter.types].sort() };
    const page = this.#paging.start(EVENT_LIST, tenant, filters, request);
    const after = page.after !== undefined ? Number(page.after[0]) : filter.afterSeq;
    const result = await this.read(
      tenant,
      runId,
      after,
      { limit: page.limit, maxBytes: EVENT_PAGE_BYTES },
      filter.types,
    );
    if (result.events.length === 0) await this.lastSeq(tenant, runId);
    const last = result.events.at(-1);
    return {
      items: result.events,
      nextPageToken: result.more && last !== undefined ? page.tokenAfter([String(last.seq)]) : "",
    };
  }

  /** Like list, without checking that the run exists (the stream hub's hot path). */
  async read(
    tenant: string,
    runId: string,
    afterSeq: number,
    page: { limit: number; maxBytes: number },
    types: readonly string[] = [],
  ): Promise<EventPage> {
    const rows = await this.#db.sql.all(
      readEvents,
      tenant,
      runId,
      afterSeq,
      [...types],
      page.limit + 1,
      page.maxBytes,
      page.limit,
    );
    const events = rows.map((row) => ({
      runId,
      seq: row.seq,
      type: row.type,
      payload: JSON.parse(row.payload) as Record<string, unknown>,
      payloadBytes: row.bytes,
      createdAt: row.createdAt,
    }));
    return { events, more: rows.length > 0 && (rows[0]?.available ?? 0) > rows.length };
  }

  /** Where the runner's current hold of the run began in its log (its latest claim event), if ever. */
  async latestClaimBy(tenant: string, runId: string, runnerId: string): Promise<number | undefined> {
    return (await this.#db.sql.first(latestClaimBy, tenant, runId, runnerId))?.seq ?? undefined;
  }

  /** The run's newest committed seq. NOT_FOUND when the run does not exist. */
  async lastSeq(tenant: string, runId: string): Promise<number> {
    const row = await this.#db.sql.first(lastSeq, tenant, runId);
    if (row === undefined) throw runNotFound(runId);
    return row.lastSeq;
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
      if (event.type === TERMINAL_EVENT_TYPE || event.type.startsWith(SERVER_EVENT_PREFIX)) {
        throw new DomainError(
          "INVALID_ARGUMENT",
          "RESERVED_EVENT_TYPE",
          `events[${index}].type "${event.type}" is written by the server only ("${TERMINAL_EVENT_TYPE}" and "${SERVER_EVENT_PREFIX}*")`,
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
}

/** The seqs an earlier append with this request_id got; ALREADY_EXISTS if its events differed. */
async function findBatch(
  em: EntityManager,
  tenant: string,
  runId: string,
  requestId: string,
  requestHash: string | null,
): Promise<AppendResult | undefined> {
  const batch = await em.findOne(RunEventBatchEntity, { tenantId: tenant, runId, requestId });
  if (batch === null) return undefined;
  if (batch.requestHash !== requestHash) throw requestIdReused(requestId);
  return { firstSeq: batch.firstSeq, lastSeq: batch.lastSeq, createdAt: batch.createdAt };
}
