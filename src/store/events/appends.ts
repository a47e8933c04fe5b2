import { CombiningQueue, isTransientConflict, type Settled, sqlStateOf } from "../../db/combining-queue.ts";
import type { Database } from "../../db/database.ts";
import type { UnitOfWork } from "../../db/unit-of-work.ts";
import { notLeaseHolder, requestIdReused, runIsTerminal, runNotFound } from "../runs/errors.ts";
import { appendGroup } from "./sql.ts";

/** One AppendRunEvents call, validated and encoded. */
export interface AppendCall {
  tenant: string;
  runId: string;
  count: number;
  /** JSON array of {"type", "payload"}, redacted. */
  batchJson: string;
  requestId: string | null;
  requestHash: string | null;
  /** The runner the call is fenced to: it appends only while that runner holds the run. */
  runnerId: string | null;
}

export interface AppendResult {
  firstSeq: number;
  lastSeq: number;
  createdAt: Date;
}

export const RUN_EVENTS_CHANNEL = "run_events";

/** A concurrent append recorded the same request id first (run_event_batches' key). */
const UNIQUE_VIOLATION = "23505";

/** What the statement said of one call. */
type Outcome = { value: AppendResult; placed: boolean; storedHash: string | null };

export interface AppendGroupsOptions {
  /** Statements in flight at once; calls arriving meanwhile go into the next one together. */
  slots: number;
  /** Most calls per statement. */
  maxGroup: number;
  /** Most payload bytes per statement (a single larger call still goes, alone). */
  maxGroupBytes: number;
  /** An append on its own, through the unit of work: the path a failed group's calls retry by. */
  appendAlone(call: AppendCall): Promise<AppendResult>;
}

/**
 * The hot path of AppendRunEvents: concurrent appends, to any runs, combined into one
 * autocommitted statement (sql.ts appendGroup): seq allocation, the events, the idempotency
 * records and the feed's NOTIFY in one round trip and one commit for the whole group, with each
 * call's own seqs and its own error. When calls do not overlap, each is a group of one and goes at
 * once. A statement that failed in a way that certainly wrote nothing (a deadlock across
 * replicas, a concurrent duplicate request id hitting the batch table's key) sends each of its
 * calls through the ordinary transaction, which handles those races one by one; any other failure
 * (a connection lost mid-commit: did it commit?) fails the calls, which retry with their request
 * ids, rather than risk appending them twice.
 *
 * This statement commits outside the unit of work's transactions, so it notifies in its own SQL
 * and tells the in-process feed through UnitOfWork.committed: the one sanctioned exception to
 * "every write is a `uow.run`", for the one path hot enough to need a single round trip.
 */
export class AppendGroups {
  readonly #db: Database;
  readonly #uow: UnitOfWork;
  readonly #queue: CombiningQueue<AppendCall, AppendResult>;
  readonly #appendAlone: (call: AppendCall) => Promise<AppendResult>;

  constructor(db: Database, uow: UnitOfWork, options: AppendGroupsOptions) {
    this.#db = db;
    this.#uow = uow;
    this.#appendAlone = options.appendAlone;
    this.#queue = new CombiningQueue({
      slots: options.slots,
      maxGroup: options.maxGroup,
      maxGroupBytes: options.maxGroupBytes,
      sizeOf: (call) => call.batchJson.length,
      runGroup: (calls) => this.#runGroup(calls),
      runAlone: options.appendAlone,
      retryAlone: (err) => isTransientConflict(err) || sqlStateOf(err) === UNIQUE_VIOLATION,
    });
  }

  append(call: AppendCall): Promise<AppendResult> {
    return this.#queue.submit(call);
  }

  stats(): { groups: number; calls: number } {
    return this.#queue.stats();
  }

  async #runGroup(calls: readonly AppendCall[]): Promise<Settled<AppendResult>[]> {
    // A request id twice in one group: only its first call goes in; the others share its outcome.
    const firstOf = new Map<string, number>();
    const sent: number[] = [];
    const sameAs: number[] = calls.map((call, i) => {
      if (call.requestId === null) {
        sent.push(i);
        return i;
      }
      const key = `${call.tenant}\u0000${call.runId}\u0000${call.requestId}`;
      const first = firstOf.get(key);
      if (first !== undefined) return first;
      firstOf.set(key, i);
      sent.push(i);
      return i;
    });
    const picked = sent.map((i) => calls[i] as AppendCall);
    const callsJson = `[${picked
      .map(
        (c) =>
          `{"t":${JSON.stringify(c.tenant)},"r":${JSON.stringify(c.runId)},"n":${c.count},"b":${c.batchJson},` +
          `"q":${JSON.stringify(c.requestId)},"h":${JSON.stringify(c.requestHash)},"w":${JSON.stringify(c.runnerId)}}`,
      )
      .join(",")}]`;
    const rows = await this.#db.sql.all(appendGroup, callsJson, this.#uow.notifyChannel ?? null);
    // The statement committed. From here on nothing may throw: a throw would send the group's
    // calls through again, and those already placed would be appended twice.
    const outcomes = new Map<number, Outcome>();
    const refused = new Map<number, { outcome: string; holder: string | null; status: string | null }>();
    const changes = new Map<string, { tenant: string; runId: string; seq: number }>();
    for (const row of rows) {
      if (row.outcome === "notified") continue;
      const index = sent[row.ord - 1];
      const call = index === undefined ? undefined : calls[index];
      if (index === undefined || call === undefined || row.firstSeq === null || row.lastSeq === null)
        continue;
      const value = { firstSeq: row.firstSeq, lastSeq: row.lastSeq, createdAt: row.createdAt ?? new Date() };
      const placed = row.outcome === "placed";
      outcomes.set(index, { value, placed, storedHash: placed ? call.requestHash : row.requestHash });
      if (placed) {
        const key = `${call.tenant}\u0000${call.runId}`;
        const seen = changes.get(key);
        if (seen === undefined || seen.seq < value.lastSeq) {
          changes.set(key, { tenant: call.tenant, runId: call.runId, seq: value.lastSeq });
        }
      }
    }
    // Tell the in-process feed (PostgreSQL's already has the statement's NOTIFY).
    this.#uow.committed(
      [...changes.values()].map((c) => ({
        channel: RUN_EVENTS_CHANNEL,
        tenant: c.tenant,
        key: c.runId,
        seq: c.seq,
      })),
    );
    const settled: Settled<AppendResult>[] = [];
    for (const [i, call] of calls.entries()) {
      const outcome = outcomes.get(sameAs[i] ?? i);
      if (outcome === undefined) {
        settled.push(await this.#refusal(call, refused.get(sameAs[i] ?? i)));
      } else if (call.requestId !== null && outcome.storedHash !== call.requestHash) {
        // The request id holds other events: recorded before, or by an earlier call of this group.
        settled.push({ ok: false, error: requestIdReused(call.requestId) });
      } else {
        settled.push({ ok: true, value: outcome.value });
      }
    }
    return settled;
  }

  /**
   * A call the statement did not place: its run is missing or terminal, held by another runner
   * than the call is fenced to, or was locked by another transaction, in which case the call goes
   * through the ordinary transaction, which waits for the lock.
   */
  async #refusal(
    call: AppendCall,
    refused: { outcome: string; holder: string | null; status: string | null } | undefined,
  ): Promise<Settled<AppendResult>> {
    switch (refused?.outcome) {
      case "missing":
        return { ok: false, error: runNotFound(call.runId) };
      case "terminal":
        return { ok: false, error: runIsTerminal({ id: call.runId, status: refused.status ?? "terminal" }) };
      case "not_holder":
        return { ok: false, error: notLeaseHolder(call.runId, call.runnerId ?? "", refused.holder) };
      default:
        try {
          return { ok: true, value: await this.#appendAlone(call) };
        } catch (error) {
          return { ok: false, error };
        }
    }
  }
}
