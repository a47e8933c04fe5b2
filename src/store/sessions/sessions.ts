import { DomainError } from "../../core/errors.ts";
import { isStringTuple, type ListSpec, type Page, type PageRequest, type Paging } from "../../core/paging.ts";
import type { Database } from "../../db/database.ts";
import type { Tx, UnitOfWork } from "../../db/unit-of-work.ts";
import type { EventStore, StoredEvent } from "../events/events.ts";
import { RunEntity } from "../runs/entities.ts";
import { runNotFound } from "../runs/errors.ts";
import { RUNS_STREAM } from "../runs/model.ts";
import { InterruptEntity, SessionEntity, SessionReadCursorEntity } from "./entities.ts";
import {
  attentionOf,
  type ExecutionState,
  OUTPUT_EVENT_TYPES,
  SESSIONS_STREAM,
  type Session,
  type SessionListFilter,
  type SessionUpdate,
} from "./model.ts";
import {
  getSession,
  listSessions,
  markRead,
  type SessionReadRow,
  sessionRunsAfter,
  sessionsStreamHead,
  tombstoneSession,
} from "./sql.ts";

/** Active first, then unread, then by activity and id, newest first: (active, unread, activity, id). */
const SESSION_LIST: ListSpec<[boolean, boolean, string, string]> = {
  name: "sessions",
  defaultSize: 50,
  maxSize: 200,
  isPosition: (p): p is [boolean, boolean, string, string] =>
    Array.isArray(p) &&
    p.length === 4 &&
    typeof p[0] === "boolean" &&
    typeof p[1] === "boolean" &&
    typeof p[2] === "string" &&
    typeof p[3] === "string",
};

/** Across a session's runs: (run created_at, run id, seq). */
const SESSION_EVENT_LIST: ListSpec<string[]> = {
  name: "session_events",
  defaultSize: 100,
  maxSize: 1000,
  isPosition: isStringTuple(3),
};

/** A page of events stays near this size, like ListRunEvents. */
const EVENT_PAGE_BYTES = 3 * 1024 * 1024;
/** Runs of a session read per step while filling a page of its events. */
const RUNS_PER_STEP = 50;

const sessionSize = (s: Session) =>
  JSON.stringify(s.summary).length + JSON.stringify(s.metadata).length + 512;

export const sessionNotFound = (sessionId: string) =>
  new DomainError("NOT_FOUND", "SESSION_NOT_FOUND", `session ${sessionId} does not exist`, {
    session_id: sessionId,
  });

/**
 * The session aggregate: reading sessions as a reader sees them, annotating them (title, summary,
 * metadata, expiry, read cursors) and deleting them. Sessions are created and kept in step with
 * their runs by the sessions work hook (sync.ts); every write here takes the tenant's next
 * sessions version (WatchSessions), sessions version lock before any session row.
 */
export class SessionStore {
  readonly #db: Database;
  readonly #uow: UnitOfWork;
  readonly #paging: Paging;
  readonly #events: EventStore;

  constructor(db: Database, uow: UnitOfWork, paging: Paging, events: EventStore) {
    this.#db = db;
    this.#uow = uow;
    this.#paging = paging;
    this.#events = events;
  }

  async get(tenant: string, sessionId: string, readerId: string | null): Promise<Session> {
    const row = await this.#db.sql.first(getSession, tenant, readerId, sessionId);
    if (row === undefined) throw sessionNotFound(sessionId);
    return toSession(row);
  }

  async list(
    tenant: string,
    filter: { filter: SessionListFilter; backendProfile: string | null; readerId: string | null },
    request: PageRequest,
  ): Promise<Page<Session>> {
    const page = this.#paging.start(SESSION_LIST, tenant, filter, request);
    const [active, unread, activity, id] = page.after ?? [null, null, null, null];
    const rows = await this.#db.sql.all(
      listSessions,
      tenant,
      filter.readerId,
      filter.backendProfile,
      filter.filter,
      page.limit + 1,
      active,
      unread,
      activity === null ? null : new Date(activity),
      id,
    );
    const done = page.finish(
      rows.map((row) => ({ session: toSession(row), row })),
      ({ row }) => [row.active, row.unread, row.activity.toISOString(), row.id],
      ({ session }) => sessionSize(session),
    );
    return { items: done.items.map(({ session }) => session), nextPageToken: done.nextPageToken };
  }

  /**
   * Changes what a caller may set. With an expected version, a session that moved on is ABORTED
   * (VERSION_MISMATCH), so that two editors never overwrite each other unknowingly.
   */
  async update(
    tenant: string,
    sessionId: string,
    update: SessionUpdate,
    expectedVersion: number | null,
  ): Promise<Session> {
    await this.#uow.run(tenant, async (tx) => {
      await lockSessions(tx, tenant);
      const row = await liveSession(tx, tenant, sessionId);
      if (expectedVersion !== null && Number(row.version) !== expectedVersion) {
        throw new DomainError(
          "ABORTED",
          "VERSION_MISMATCH",
          `session ${sessionId} is at version ${row.version}, not ${expectedVersion}; read it again and retry`,
          { session_id: sessionId, version: String(row.version), expected_version: String(expectedVersion) },
        );
      }
      const version = await tx.nextVersion(tenant, SESSIONS_STREAM);
      const changes: Record<string, unknown> = { version, updatedAt: new Date(), lastActivityAt: new Date() };
      if (update.title !== undefined) {
        changes.title = update.title === "" ? null : update.title;
        changes.titleSet = update.title !== "";
      }
      if (update.summary !== undefined) changes.summary = update.summary;
      if (update.metadata !== undefined) changes.metadata = update.metadata;
      if (update.expiresAt !== undefined) changes.expiresAt = update.expiresAt;
      await tx.em.nativeUpdate(SessionEntity, { tenantId: tenant, id: sessionId }, changes);
    });
    return this.get(tenant, sessionId, null);
  }

  /** Deletes a session that has no active run; its runs stay, without it. */
  async delete(tenant: string, sessionId: string, allowMissing: boolean): Promise<void> {
    await this.#uow.run(tenant, async (tx) => {
      await lockSessions(tx, tenant);
      let row: { executionState: string; activeRunId?: string | null };
      try {
        row = await liveSession(tx, tenant, sessionId);
      } catch (err) {
        if (allowMissing && err instanceof DomainError && err.reason === "SESSION_NOT_FOUND") return;
        throw err;
      }
      if (row.executionState === "running") {
        throw new DomainError(
          "FAILED_PRECONDITION",
          "SESSION_ACTIVE",
          `session ${sessionId} has an active run (${row.activeRunId}); cancel or finish it first`,
          { session_id: sessionId, active_run_id: row.activeRunId ?? "" },
        );
      }
      const version = await tx.nextVersion(tenant, SESSIONS_STREAM);
      await tx.sql.all(tombstoneSession, tenant, sessionId, version);
      await tx.em.nativeDelete(SessionReadCursorEntity, { tenantId: tenant, sessionId });
      await tx.em.nativeDelete(InterruptEntity, { tenantId: tenant, sessionId });
    });
  }

  /** Moves the reader's cursor to a version (the current one by default); it never moves back. */
  async markRead(tenant: string, sessionId: string, readerId: string, upTo: number | null): Promise<Session> {
    await this.#uow.run(tenant, async (tx) => {
      const row = await liveSession(tx, tenant, sessionId);
      const current = Number(row.version);
      if (upTo !== null && upTo > current) {
        throw new DomainError(
          "INVALID_ARGUMENT",
          "VERSION_AHEAD",
          `up_to_version ${upTo} is beyond the session's version ${current}`,
          { session_id: sessionId, version: String(current) },
        );
      }
      await tx.sql.all(markRead, tenant, sessionId, readerId, upTo ?? current);
    });
    return this.get(tenant, sessionId, readerId);
  }

  /**
   * Events of the session's runs: one run's after a seq, or every run's, oldest run first, paged
   * across runs by (run created_at, run id, seq).
   */
  async listEvents(
    tenant: string,
    sessionId: string,
    filter: { runId: string | null; afterSeq: number; outputOnly: boolean },
    request: PageRequest,
  ): Promise<Page<StoredEvent>> {
    await this.get(tenant, sessionId, null);
    const types = filter.outputOnly ? OUTPUT_EVENT_TYPES : [];
    const page = this.#paging.start(SESSION_EVENT_LIST, tenant, { sessionId, ...filter }, request);
    let runs: Array<{ id: string; createdAt: Date }>;
    let afterSeq: number;
    if (filter.runId !== null) {
      const run = await this.#db.orm.em
        .fork()
        .findOne(
          RunEntity,
          { tenantId: tenant, id: filter.runId },
          { fields: ["id", "sessionId", "createdAt"] },
        );
      if (run === null || run.sessionId !== sessionId) throw runNotFound(filter.runId);
      runs = [{ id: run.id, createdAt: run.createdAt }];
      afterSeq = page.after !== undefined ? Number(page.after[2]) : filter.afterSeq;
    } else {
      runs = [];
      afterSeq = page.after !== undefined ? Number(page.after[2]) : 0;
    }
    const items: StoredEvent[] = [];
    let bytes = 0;
    let cursor: { createdAt: Date; id: string } | null =
      page.after !== undefined ? { createdAt: new Date(page.after[0] ?? ""), id: page.after[1] ?? "" } : null;
    let more = false;
    let position: string[] | undefined;
    // The run the token stopped in comes first, then the runs after it.
    if (filter.runId === null && cursor !== null) runs = [{ id: cursor.id, createdAt: cursor.createdAt }];
    for (;;) {
      if (runs.length === 0) {
        if (filter.runId !== null) break;
        runs = await this.#db.sql.all(
          sessionRunsAfter,
          tenant,
          sessionId,
          cursor?.createdAt ?? null,
          cursor?.id ?? null,
          RUNS_PER_STEP,
        );
        if (runs.length === 0) break;
      }
      const run = runs.shift();
      if (run === undefined) break;
      cursor = run;
      const read = await this.#events.read(
        tenant,
        run.id,
        afterSeq,
        { limit: page.limit - items.length, maxBytes: Math.max(1, EVENT_PAGE_BYTES - bytes) },
        types,
      );
      afterSeq = 0;
      for (const event of read.events) {
        items.push(event);
        bytes += event.payloadBytes;
      }
      const last = read.events.at(-1);
      if (last !== undefined) position = [run.createdAt.toISOString(), run.id, String(last.seq)];
      if (read.more) {
        more = true;
        break;
      }
      if (items.length >= page.limit || bytes >= EVENT_PAGE_BYTES) {
        // The page is full at a run's end: whether more follow, the next page finds out.
        position = [run.createdAt.toISOString(), run.id, String(last?.seq ?? Number.MAX_SAFE_INTEGER)];
        more = filter.runId === null;
        break;
      }
      if (filter.runId !== null) break;
    }
    return { items, nextPageToken: more && position !== undefined ? page.tokenAfter(position) : "" };
  }

  /** The newest version of the tenant's sessions stream, 0 before the first change. */
  async watchHead(tenant: string): Promise<number> {
    return (await this.#db.sql.first(sessionsStreamHead, tenant))?.head ?? 0;
  }

  /** The reader's cursors of these sessions, for WatchSessions with a reader. */
  async readVersions(tenant: string, readerId: string, sessionIds: string[]): Promise<Map<string, number>> {
    const rows = await this.#db.orm.em
      .fork()
      .find(
        SessionReadCursorEntity,
        { tenantId: tenant, readerId, sessionId: { $in: sessionIds } },
        { fields: ["sessionId", "version"] },
      );
    return new Map(rows.map((r) => [r.sessionId, Number(r.version)]));
  }
}

/**
 * Takes the locks a session write needs, in the one order every write of the tenant follows
 * (db/unit-of-work.ts): the runs version before the sessions version. Writes of runs reach the
 * sessions version after theirs through the sessions hook; if a session write took the sessions
 * version alone, a group holding it and then running a run write would wait for a group that
 * holds the runs version and waits for the sessions version.
 */
export async function lockSessions(tx: Tx, tenant: string): Promise<void> {
  await tx.lockVersion(tenant, RUNS_STREAM);
  await tx.lockVersion(tenant, SESSIONS_STREAM);
}

/** The live session's row, or NOT_FOUND; for writes, under the sessions version lock. */
async function liveSession(tx: Tx, tenant: string, sessionId: string) {
  const row = await tx.em.findOne(SessionEntity, {
    tenantId: tenant,
    id: sessionId,
    deletedAt: null,
    $or: [{ expiresAt: null }, { expiresAt: { $gt: new Date() } }],
  });
  if (row === null) throw sessionNotFound(sessionId);
  return row;
}

/** A read row as the aggregate's domain type. */
export function toSession(row: SessionReadRow): Session {
  const executionState = row.executionState as ExecutionState;
  return {
    id: row.id,
    backendProfile: row.backendProfile,
    project: row.project,
    threadId: row.threadId,
    title: row.title,
    summary: JSON.parse(row.summaryJson) as Record<string, unknown>,
    metadata: JSON.parse(row.metadataJson) as Record<string, unknown>,
    version: row.version,
    executionState,
    activeRunId: row.activeRunId,
    lastRunId: row.lastRunId,
    activeCommandId: row.activeCommandId,
    lastCommandId: row.lastCommandId,
    lastEventSeq: row.lastEventSeq,
    terminalStatus: row.terminalStatus,
    failureKind: row.failureKind,
    lastActivityAt: row.activity,
    expiresAt: row.expiresAt,
    createdAt: row.createdAt,
    updatedAt: row.updatedAt,
    deleted: row.deleted,
    readVersion: row.readVersion,
    attention: attentionOf(executionState, row.version, row.readVersion),
    pendingInterrupts: row.pendingInterrupts,
  };
}
