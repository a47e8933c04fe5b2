import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  BindSessionResponseSchema,
  ClaimPendingSessionResponseSchema,
  CompleteSessionClaimResponseSchema,
  DeleteSessionResponseSchema,
  GetSessionResponseSchema,
  ListBindingsResponseSchema,
  ListInterruptsResponseSchema,
  ListSessionEventsResponseSchema,
  ListSessionsResponseSchema,
  MarkSessionReadResponseSchema,
  PutInterruptResponseSchema,
  ReleaseSessionClaimResponseSchema,
  ResolveInterruptResponseSchema,
  ResolveSessionResponseSchema,
  type SessionService,
  UnbindSessionResponseSchema,
  UpdateSessionResponseSchema,
  WatchSessionsResponseSchema,
} from "../../gen/agentstore/v1/session_service_pb.ts";
import { invalidArgument } from "../core/errors.ts";
import type { VersionHub } from "../feed/stream-hub.ts";
import { tenantOf } from "../server/auth.ts";
import type { GatewayStore } from "../store/sessions/gateway.ts";
import type { InterruptStore } from "../store/sessions/interrupts.ts";
import { attentionOf, SESSIONS_STREAM, type Session, type SessionUpdate } from "../store/sessions/model.ts";
import type { SessionStore } from "../store/sessions/sessions.ts";
import { dateFromProto, emptyToNull, eventToProto, positionFromProto, watchStart } from "./run-convert.ts";
import { msFromDuration } from "./runner-convert.ts";
import {
  bindingToProto,
  claimToProto,
  interruptToProto,
  listFilterFromProto,
  sessionToProto,
} from "./session-convert.ts";

export interface SessionServiceDeps {
  sessions: SessionStore;
  gateway: GatewayStore;
  interrupts: InterruptStore;
  sessionHub: VersionHub<Session>;
}

/** A pending-session claim lives this long when the request names no TTL. */
const DEFAULT_CLAIM_TTL_MS = 30_000;

/** The paths UpdateSession accepts in its update_mask. */
const UPDATABLE = new Set(["title", "summary", "metadata", "expire_time"]);

const lower = (id: string) => id.toLowerCase();

/** SessionService: map -> store -> map; the tenant from the caller's credentials. */
export function createSessionService(deps: SessionServiceDeps): ServiceImpl<typeof SessionService> {
  const { sessions, gateway, interrupts, sessionHub } = deps;
  return {
    async getSession(req, ctx) {
      const session = await sessions.get(tenantOf(ctx), req.sessionId, emptyToNull(req.readerId));
      return create(GetSessionResponseSchema, { session: sessionToProto(session) });
    },

    async listSessions(req, ctx) {
      const page = await sessions.list(
        tenantOf(ctx),
        {
          filter: listFilterFromProto(req.filter),
          backendProfile: emptyToNull(req.backendProfile),
          readerId: emptyToNull(req.readerId),
        },
        req,
      );
      return create(ListSessionsResponseSchema, {
        sessions: page.items.map(sessionToProto),
        nextPageToken: page.nextPageToken,
      });
    },

    async updateSession(req, ctx) {
      const session = req.session;
      const paths = req.updateMask?.paths ?? [];
      if (session === undefined || paths.length === 0) {
        throw invalidArgument("INVALID_ARGUMENT", "update_mask must name at least one field", {
          field: "update_mask",
        });
      }
      const update: SessionUpdate = {};
      for (const path of paths) {
        if (!UPDATABLE.has(path)) {
          throw invalidArgument(
            "INVALID_ARGUMENT",
            `update_mask path "${path}" is not one of ${[...UPDATABLE].join(", ")}`,
            {
              field: "update_mask",
            },
          );
        }
        if (path === "title") update.title = session.title;
        if (path === "summary") update.summary = session.summary ?? {};
        if (path === "metadata") update.metadata = session.metadata ?? {};
        if (path === "expire_time") update.expiresAt = dateFromProto(session.expireTime) ?? null;
      }
      const updated = await sessions.update(
        tenantOf(ctx),
        session.sessionId,
        update,
        req.expectedVersion === 0n ? null : positionFromProto(req.expectedVersion),
      );
      return create(UpdateSessionResponseSchema, { session: sessionToProto(updated) });
    },

    async deleteSession(req, ctx) {
      await sessions.delete(tenantOf(ctx), req.sessionId, req.allowMissing);
      return create(DeleteSessionResponseSchema, {});
    },

    async markSessionRead(req, ctx) {
      const session = await sessions.markRead(
        tenantOf(ctx),
        req.sessionId,
        req.readerId,
        req.upToVersion === 0n ? null : positionFromProto(req.upToVersion),
      );
      return create(MarkSessionReadResponseSchema, { session: sessionToProto(session) });
    },

    async listSessionEvents(req, ctx) {
      const page = await sessions.listEvents(
        tenantOf(ctx),
        req.sessionId,
        {
          runId: emptyToNull(lower(req.runId)),
          afterSeq: positionFromProto(req.afterSeq),
          outputOnly: req.outputOnly,
        },
        req,
      );
      return create(ListSessionEventsResponseSchema, {
        events: page.items.map(eventToProto),
        nextPageToken: page.nextPageToken,
      });
    },

    async *watchSessions(req, ctx) {
      const tenant = tenantOf(ctx);
      const start = await watchStart(req, () => sessions.watchHead(tenant));
      const reader = emptyToNull(req.readerId);
      const profile = emptyToNull(req.backendProfile);
      for await (const entry of sessionHub.follow(tenant, SESSIONS_STREAM, start, ctx.signal)) {
        let session = entry.value;
        if (profile !== null && session.backendProfile !== profile) continue;
        const version = BigInt(entry.seq);
        if (session.deleted || (session.expiresAt !== null && session.expiresAt.getTime() <= Date.now())) {
          yield create(WatchSessionsResponseSchema, {
            session: { sessionId: session.id },
            version,
            removed: true,
          });
          continue;
        }
        if (reader !== null) {
          const readVersion =
            (await sessions.readVersions(tenant, reader, [session.id])).get(session.id) ?? 0;
          session = {
            ...session,
            readVersion,
            attention: attentionOf(session.executionState, session.version, readVersion),
          };
        }
        yield create(WatchSessionsResponseSchema, { session: sessionToProto(session), version });
      }
    },

    async bindSession(req, ctx) {
      const b = req.binding;
      if (b === undefined)
        throw invalidArgument("INVALID_ARGUMENT", "binding is required", { field: "binding" });
      const binding = await gateway.bind(tenantOf(ctx), b.identity, b.contextId, b.sessionId);
      return create(BindSessionResponseSchema, { binding: bindingToProto(binding) });
    },

    async resolveSession(req, ctx) {
      const binding = await gateway.resolve(tenantOf(ctx), req.identity, req.contextId);
      return create(ResolveSessionResponseSchema, { binding: bindingToProto(binding) });
    },

    async unbindSession(req, ctx) {
      const changed = await gateway.unbind(tenantOf(ctx), req.identity, req.contextId);
      return create(UnbindSessionResponseSchema, { changed });
    },

    async listBindings(req, ctx) {
      const page = await gateway.listBindings(tenantOf(ctx), req.identity, req);
      return create(ListBindingsResponseSchema, {
        bindings: page.items.map(bindingToProto),
        nextPageToken: page.nextPageToken,
      });
    },

    async claimPendingSession(req, ctx) {
      const { claim, binding, takeover } = await gateway.claim(
        tenantOf(ctx),
        req.identity,
        req.contextId,
        req.claimant,
        msFromDuration(req.ttl, DEFAULT_CLAIM_TTL_MS),
      );
      return create(ClaimPendingSessionResponseSchema, {
        claim: claim === null ? undefined : claimToProto(claim),
        binding: binding === null ? undefined : bindingToProto(binding),
        takeover,
      });
    },

    async releaseSessionClaim(req, ctx) {
      await gateway.release(tenantOf(ctx), req.identity, req.contextId, req.claimant);
      return create(ReleaseSessionClaimResponseSchema, {});
    },

    async completeSessionClaim(req, ctx) {
      const binding = await gateway.complete(
        tenantOf(ctx),
        req.identity,
        req.contextId,
        req.claimant,
        req.sessionId,
      );
      return create(CompleteSessionClaimResponseSchema, { binding: bindingToProto(binding) });
    },

    async putInterrupt(req, ctx) {
      const i = req.interrupt;
      if (i === undefined)
        throw invalidArgument("INVALID_ARGUMENT", "interrupt is required", { field: "interrupt" });
      for (const [field, value] of [
        ["interrupt.interrupt_id", i.interruptId],
        ["interrupt.session_id", i.sessionId],
        ["interrupt.kind", i.kind],
      ] as const) {
        if (value === "") throw invalidArgument("INVALID_ARGUMENT", `${field} is required`, { field });
      }
      if (req.ttl !== undefined && i.expireTime !== undefined) {
        throw invalidArgument("INVALID_ARGUMENT", "set interrupt.expire_time or ttl, not both", {
          field: "ttl",
        });
      }
      const interrupt = await interrupts.put(tenantOf(ctx), {
        id: i.interruptId,
        sessionId: i.sessionId,
        runId: emptyToNull(lower(i.runId)),
        kind: i.kind,
        payload: i.payload ?? {},
        expiresAt: dateFromProto(i.expireTime) ?? null,
        ttlMs: req.ttl === undefined ? null : msFromDuration(req.ttl, 0),
      });
      return create(PutInterruptResponseSchema, { interrupt: interruptToProto(interrupt) });
    },

    async listInterrupts(req, ctx) {
      if (req.sessionId === "" && req.runId === "") {
        throw invalidArgument("INVALID_ARGUMENT", "name a session_id, a run_id or both", {
          field: "session_id",
        });
      }
      const page = await interrupts.list(
        tenantOf(ctx),
        {
          sessionId: emptyToNull(req.sessionId),
          runId: emptyToNull(lower(req.runId)),
          pendingOnly: req.pendingOnly,
        },
        req,
      );
      return create(ListInterruptsResponseSchema, {
        interrupts: page.items.map(interruptToProto),
        nextPageToken: page.nextPageToken,
      });
    },

    async resolveInterrupt(req, ctx) {
      const { interrupt, changed } = await interrupts.resolve(
        tenantOf(ctx),
        req.interruptId,
        req.answer ?? {},
        emptyToNull(req.resolvedBy),
      );
      return create(ResolveInterruptResponseSchema, { interrupt: interruptToProto(interrupt), changed });
    },
  };
}
