import { DomainError } from "../../core/errors.ts";
import { stableHash } from "../../core/hash.ts";
import { jsonWithinLimit } from "../../core/limits.ts";
import { isStringTuple, type ListSpec, type Page, type PageRequest, type Paging } from "../../core/paging.ts";
import type { Database } from "../../db/database.ts";
import type { Tx, UnitOfWork } from "../../db/unit-of-work.ts";
import { RunEntity } from "../runs/entities.ts";
import { runNotFound } from "../runs/errors.ts";
import { type InterruptRow, SessionEntity } from "./entities.ts";
import { type Interrupt, type InterruptState, type NewInterrupt, SESSIONS_STREAM } from "./model.ts";
import { lockSessions, sessionNotFound } from "./sessions.ts";
import { getInterrupt, insertInterrupt, listInterrupts, resolveInterrupt, touchSession } from "./sql.ts";

/** Oldest first, by (created_at, id). */
const INTERRUPT_LIST: ListSpec<string[]> = {
  name: "interrupts",
  defaultSize: 100,
  maxSize: 1000,
  isPosition: isStringTuple(2),
};

const interruptNotFound = (id: string) =>
  new DomainError("NOT_FOUND", "INTERRUPT_NOT_FOUND", `interrupt ${id} does not exist or has expired`, {
    interrupt_id: id,
  });

/**
 * Interrupts of sessions (opencode-a2a's permission requests and questions), stored so that they
 * survive restarts. An expired interrupt is gone from every read at once, whether or not anything
 * swept it. Putting or resolving one moves its session to a new version, so watchers see it.
 */
export class InterruptStore {
  readonly #db: Database;
  readonly #uow: UnitOfWork;
  readonly #paging: Paging;
  readonly #maxPayloadBytes: number;

  constructor(db: Database, uow: UnitOfWork, paging: Paging, maxPayloadBytes: number) {
    this.#db = db;
    this.#uow = uow;
    this.#paging = paging;
    this.#maxPayloadBytes = maxPayloadBytes;
  }

  async put(tenant: string, interrupt: NewInterrupt): Promise<Interrupt> {
    const payload = jsonWithinLimit("the interrupt's payload", interrupt.payload, this.#maxPayloadBytes);
    const hash = stableHash({
      sessionId: interrupt.sessionId,
      runId: interrupt.runId,
      kind: interrupt.kind,
      payload: interrupt.payload,
    });
    return this.#uow.run(tenant, async (tx) => {
      await lockSessions(tx, tenant);
      await requireSession(tx, tenant, interrupt.sessionId);
      if (interrupt.runId !== null) {
        const run = await tx.em.findOne(
          RunEntity,
          { tenantId: tenant, id: interrupt.runId },
          { fields: ["id", "sessionId"] },
        );
        if (run === null) throw runNotFound(interrupt.runId);
        if (run.sessionId !== interrupt.sessionId) {
          throw new DomainError(
            "FAILED_PRECONDITION",
            "RUN_NOT_IN_SESSION",
            `run ${interrupt.runId} does not belong to session ${interrupt.sessionId}`,
            { run_id: interrupt.runId, session_id: interrupt.sessionId },
          );
        }
      }
      const inserted = await tx.sql.first(
        insertInterrupt,
        tenant,
        interrupt.id,
        interrupt.sessionId,
        interrupt.runId,
        interrupt.kind,
        payload,
        hash,
        interrupt.expiresAt,
        interrupt.ttlMs,
      );
      if (inserted !== undefined) {
        await touch(tx, tenant, interrupt.sessionId);
        return toInterrupt(inserted.interrupt);
      }
      const existing = await tx.sql.first(getInterrupt, tenant, interrupt.id);
      if (existing === undefined || existing.interrupt.payloadHash !== hash) {
        throw new DomainError(
          "ALREADY_EXISTS",
          "INTERRUPT_EXISTS",
          `interrupt ${interrupt.id} exists with other contents; choose another id`,
          { interrupt_id: interrupt.id },
        );
      }
      return toInterrupt(existing.interrupt);
    });
  }

  async list(
    tenant: string,
    filter: { sessionId: string | null; runId: string | null; pendingOnly: boolean },
    request: PageRequest,
  ): Promise<Page<Interrupt>> {
    const page = this.#paging.start(INTERRUPT_LIST, tenant, filter, request);
    const rows = await this.#db.sql.all(
      listInterrupts,
      tenant,
      filter.sessionId,
      filter.runId,
      filter.pendingOnly,
      page.after === undefined ? null : new Date(page.after[0] ?? ""),
      page.after?.[1] ?? null,
      page.limit + 1,
    );
    return page.finish(
      rows.map((r) => toInterrupt(r.interrupt)),
      (i) => [i.createdAt.toISOString(), i.id],
      (i) => JSON.stringify(i.payload).length + JSON.stringify(i.answer ?? {}).length + 256,
    );
  }

  /** The first answer wins; later ones change nothing and say so. */
  async resolve(
    tenant: string,
    id: string,
    answer: Record<string, unknown>,
    resolvedBy: string | null,
  ): Promise<{ interrupt: Interrupt; changed: boolean }> {
    const answerJson = jsonWithinLimit("the answer", answer, this.#maxPayloadBytes);
    return this.#uow.run(tenant, async (tx) => {
      await lockSessions(tx, tenant);
      const resolved = await tx.sql.first(resolveInterrupt, tenant, id, answerJson, resolvedBy);
      if (resolved !== undefined) {
        await touch(tx, tenant, resolved.interrupt.sessionId);
        return { interrupt: toInterrupt(resolved.interrupt), changed: true };
      }
      const existing = await tx.sql.first(getInterrupt, tenant, id);
      if (existing === undefined) throw interruptNotFound(id);
      return { interrupt: toInterrupt(existing.interrupt), changed: false };
    });
  }
}

async function requireSession(tx: Tx, tenant: string, sessionId: string): Promise<void> {
  const row = await tx.em.findOne(
    SessionEntity,
    {
      tenantId: tenant,
      id: sessionId,
      deletedAt: null,
      $or: [{ expiresAt: null }, { expiresAt: { $gt: new Date() } }],
    },
    { fields: ["id"] },
  );
  if (row === null) throw sessionNotFound(sessionId);
}

async function touch(tx: Tx, tenant: string, sessionId: string): Promise<void> {
  const version = await tx.nextVersion(tenant, SESSIONS_STREAM);
  await tx.sql.all(touchSession, tenant, sessionId, version);
}

function toInterrupt(row: InterruptRow): Interrupt {
  return {
    id: row.id,
    sessionId: row.sessionId,
    runId: row.runId ?? null,
    kind: row.kind,
    payload: row.payload,
    state: row.state as InterruptState,
    answer: row.answer ?? null,
    resolvedBy: row.resolvedBy ?? null,
    expiresAt: row.expiresAt ?? null,
    createdAt: row.createdAt,
    resolvedAt: row.resolvedAt ?? null,
  };
}
