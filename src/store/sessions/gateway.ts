import { LockMode } from "@mikro-orm/core";
import { DomainError } from "../../core/errors.ts";
import { isStringTuple, type ListSpec, type Page, type PageRequest, type Paging } from "../../core/paging.ts";
import type { Database } from "../../db/database.ts";
import type { Tx, UnitOfWork } from "../../db/unit-of-work.ts";
import {
  SessionBindingEntity,
  type SessionBindingRow,
  SessionClaimEntity,
  type SessionClaimRow,
  SessionOwnerEntity,
} from "./entities.ts";
import type { Binding, Claim } from "./model.ts";
import { claimOwn, claimTake, deleteOwnerIfUnbound, insertClaim, ownSession, upsertBinding } from "./sql.ts";

const BINDING_LIST: ListSpec<string[]> = {
  name: "session_bindings",
  defaultSize: 100,
  maxSize: 1000,
  isPosition: isStringTuple(1),
};

export const bindingNotFound = (identity: string, contextId: string) =>
  new DomainError(
    "NOT_FOUND",
    "BINDING_NOT_FOUND",
    `no session is bound to context ${contextId} of ${identity}`,
    {
      identity,
      context_id: contextId,
    },
  );

const notClaimHolder = (identity: string, contextId: string, claimant: string) =>
  new DomainError(
    "FAILED_PRECONDITION",
    "NOT_CLAIM_HOLDER",
    `${claimant} holds no live claim on context ${contextId} of ${identity}`,
    { identity, context_id: contextId, claimant },
  );

/**
 * The runtime state of A2A gateways (opencode-a2a's): durable bindings of (identity, context_id)
 * to sessions, each session owned by the identity that bound it first, and pending-session claims
 * with a TTL, so that of many requests arriving for a new context one creates its session while
 * the others wait, and a claimant that crashed blocks the others no longer than its TTL. Lease
 * times are the database's clock.
 */
export class GatewayStore {
  readonly #db: Database;
  readonly #uow: UnitOfWork;
  readonly #paging: Paging;

  constructor(db: Database, uow: UnitOfWork, paging: Paging) {
    this.#db = db;
    this.#uow = uow;
    this.#paging = paging;
  }

  async bind(tenant: string, identity: string, contextId: string, sessionId: string): Promise<Binding> {
    return this.#uow.run(tenant, (tx) => bindIn(tx, tenant, identity, contextId, sessionId));
  }

  async resolve(tenant: string, identity: string, contextId: string): Promise<Binding> {
    const row = await this.#db.orm.em
      .fork()
      .findOne(SessionBindingEntity, { tenantId: tenant, identity, contextId });
    if (row === null) throw bindingNotFound(identity, contextId);
    return toBinding(row);
  }

  async unbind(tenant: string, identity: string, contextId: string): Promise<boolean> {
    return this.#uow.run(tenant, async (tx) => {
      const row = await tx.em.findOne(SessionBindingEntity, { tenantId: tenant, identity, contextId });
      if (row === null) return false;
      // The owner row before the binding row, in the order bindings take them.
      await tx.em.findOne(
        SessionOwnerEntity,
        { tenantId: tenant, sessionId: row.sessionId },
        { lockMode: LockMode.PESSIMISTIC_WRITE },
      );
      const deleted = await tx.em.nativeDelete(SessionBindingEntity, {
        tenantId: tenant,
        identity,
        contextId,
        sessionId: row.sessionId,
      });
      if (deleted === 0) return false;
      await tx.sql.all(deleteOwnerIfUnbound, tenant, row.sessionId);
      return true;
    });
  }

  async listBindings(tenant: string, identity: string, request: PageRequest): Promise<Page<Binding>> {
    const page = this.#paging.start(BINDING_LIST, tenant, { identity }, request);
    const where: Record<string, unknown> = { tenantId: tenant, identity };
    if (page.after !== undefined) where.contextId = { $gt: page.after[0] };
    const rows = await this.#db.orm.em
      .fork()
      .find(SessionBindingEntity, where, { orderBy: { contextId: "asc" }, limit: page.limit + 1 });
    return page.finish(rows.map(toBinding), (b) => [b.contextId]);
  }

  /**
   * A bound pair answers with its binding. Otherwise the claim is inserted, or extended for its
   * own claimant, or taken over once expired; a live claim of another is ABORTED
   * (SESSION_CLAIM_HELD). The binding is checked after the claim row is held, so a completion that
   * committed meanwhile is seen.
   */
  async claim(
    tenant: string,
    identity: string,
    contextId: string,
    claimant: string,
    ttlMs: number,
  ): Promise<{ claim: Claim | null; binding: Binding | null; takeover: boolean }> {
    return this.#uow.run(tenant, async (tx) => {
      let takeover = false;
      let claim = await tx.sql.first(insertClaim, tenant, identity, contextId, claimant, ttlMs);
      if (claim === undefined) {
        claim = await tx.sql.first(claimOwn, tenant, identity, contextId, claimant, ttlMs);
        if (claim === undefined) {
          const taken = await tx.sql.first(claimTake, tenant, identity, contextId, claimant, ttlMs);
          if (taken !== undefined) {
            takeover = true;
            claim = taken;
          }
        }
      }
      const bound = await tx.em.findOne(SessionBindingEntity, { tenantId: tenant, identity, contextId });
      if (bound !== null) {
        if (claim !== undefined)
          await tx.em.nativeDelete(SessionClaimEntity, { tenantId: tenant, identity, contextId });
        return { claim: null, binding: toBinding(bound), takeover: false };
      }
      if (claim === undefined) {
        const holder = await tx.em.findOne(SessionClaimEntity, { tenantId: tenant, identity, contextId });
        if (holder === null) throw new Error("a claim row vanished while its lock was held");
        throw new DomainError(
          "ABORTED",
          "SESSION_CLAIM_HELD",
          `context ${contextId} of ${identity} is being claimed by ${holder.claimant} until ${holder.expiresAt.toISOString()}; retry after it, or resolve the session`,
          {
            identity,
            context_id: contextId,
            claimant: holder.claimant,
            expire_time: holder.expiresAt.toISOString(),
          },
        );
      }
      return { claim: toClaim(claim.claim), binding: null, takeover };
    });
  }

  async release(tenant: string, identity: string, contextId: string, claimant: string): Promise<void> {
    await this.#uow.run(tenant, async (tx) => {
      const deleted = await tx.em.nativeDelete(SessionClaimEntity, {
        tenantId: tenant,
        identity,
        contextId,
        claimant,
      });
      if (deleted === 0) throw notClaimHolder(identity, contextId, claimant);
    });
  }

  /** The claimant's live claim becomes a binding, in one transaction. */
  async complete(
    tenant: string,
    identity: string,
    contextId: string,
    claimant: string,
    sessionId: string,
  ): Promise<Binding> {
    return this.#uow.run(tenant, async (tx) => {
      const deleted = await tx.em.nativeDelete(SessionClaimEntity, {
        tenantId: tenant,
        identity,
        contextId,
        claimant,
        expiresAt: { $gt: new Date() },
      });
      if (deleted === 0) throw notClaimHolder(identity, contextId, claimant);
      return bindIn(tx, tenant, identity, contextId, sessionId);
    });
  }
}

async function bindIn(tx: Tx, tenant: string, identity: string, contextId: string, sessionId: string) {
  const owner = await tx.sql.first(ownSession, tenant, sessionId, identity);
  if (owner !== undefined && owner.identity !== identity) {
    throw new DomainError(
      "FAILED_PRECONDITION",
      "SESSION_OWNED_BY_OTHER",
      `session ${sessionId} is bound by another identity`,
      { session_id: sessionId },
    );
  }
  const previous = await tx.em.findOne(SessionBindingEntity, { tenantId: tenant, identity, contextId });
  const row = await tx.sql.first(upsertBinding, tenant, identity, contextId, sessionId);
  if (row === undefined) throw new Error("the binding upsert returned no row");
  if (previous !== null && previous.sessionId !== sessionId) {
    await tx.sql.all(deleteOwnerIfUnbound, tenant, previous.sessionId);
  }
  return toBinding(row.binding);
}

function toBinding(row: SessionBindingRow): Binding {
  return {
    identity: row.identity,
    contextId: row.contextId,
    sessionId: row.sessionId,
    createdAt: row.createdAt,
    updatedAt: row.updatedAt,
  };
}

function toClaim(row: SessionClaimRow): Claim {
  return {
    identity: row.identity,
    contextId: row.contextId,
    claimant: row.claimant,
    expiresAt: row.expiresAt,
    createdAt: row.createdAt,
  };
}
