import { randomUUID } from "node:crypto";
import { type Client, createClient } from "@connectrpc/connect";
import { RunService } from "../../gen/agentstore/v1/run_service_pb.ts";
import { SessionService } from "../../gen/agentstore/v1/session_service_pb.ts";
import { createRedactor } from "../core/redact.ts";
import { VersionHub } from "../feed/stream-hub.ts";
import { createSessionService } from "../services/session-service.ts";
import { EventStore } from "../store/events/events.ts";
import { sessionEntities } from "../store/sessions/entities.ts";
import { GatewayStore } from "../store/sessions/gateway.ts";
import { InterruptStore } from "../store/sessions/interrupts.ts";
import type { Session } from "../store/sessions/model.ts";
import { SessionStore } from "../store/sessions/sessions.ts";
import { syncSessions } from "../store/sessions/sync.ts";
import { sessionVersionSource } from "../store/sessions/watch.ts";
import type { Module } from "./module.ts";

/** Session changes a WatchSessions topic buffers per tenant. */
const SESSION_CHANGE_BUFFER = 256;
const SESSION_BUFFER_BYTES = 8 * 1024 * 1024;

/**
 * SessionService: sessions made of runs (kept in step with their runs and commands by a work hook
 * of the unit of work), read state per reader, WatchSessions, and A2A gateways' runtime state
 * (bindings, pending-session claims, interrupts).
 */
export const sessionsModule: Module = {
  name: "sessions",
  entities: sessionEntities,
  mount({ config, db, uow, feed, paging, logger }) {
    uow.addWorkHook(syncSessions);
    const settings = config.runs;
    const events = new EventStore(db, uow, paging, {
      limits: settings.limits,
      redact: createRedactor(settings.extraRedactKeys),
      writeSlots: config.database.writeGroups,
    });
    const sessions = new SessionStore(db, uow, paging, events);
    const gateway = new GatewayStore(db, uow, paging);
    const interrupts = new InterruptStore(db, uow, paging, settings.limits.maxEventBytes);
    const sessionHub = new VersionHub<Session>(
      sessionVersionSource(db),
      feed,
      {
        bufferEntries: SESSION_CHANGE_BUFFER,
        bufferBytes: SESSION_BUFFER_BYTES,
        pageSize: 500,
        pollIntervalMs: settings.stream.pollIntervalMs,
      },
      logger,
    );
    return {
      services: [SessionService],
      routes: (router) =>
        router.service(SessionService, createSessionService({ sessions, gateway, interrupts, sessionHub })),
      hubs: new Map([["sessions", sessionHub as VersionHub<unknown>]]),
      warmUpRest: (transport) =>
        warmUpSessions(createClient(SessionService, transport), createClient(RunService, transport)),
    };
  },
};

/** A session's life through the SessionService paths, leaving only its tombstone and versions. */
async function warmUpSessions(client: Client<typeof SessionService>, runs: Client<typeof RunService>) {
  const sessionId = `warmup-${randomUUID()}`;
  const { run } = await runs.createRun({ run: { sessionId } });
  const runId = run?.runId ?? "";
  await client.putInterrupt({ interrupt: { interruptId: sessionId, sessionId, runId, kind: "question" } });
  await client.resolveInterrupt({ interruptId: sessionId, answer: { ok: true } });
  await runs.cancelRun({ runId });
  await client.getSession({ sessionId, readerId: "warmup" });
  await client.listSessions({ readerId: "warmup", pageSize: 1 });
  await client.markSessionRead({ sessionId, readerId: "warmup" });
  await client.listSessionEvents({ sessionId, pageSize: 1 });
  await client.listInterrupts({ sessionId, pageSize: 1 });
  await client.deleteSession({ sessionId });
  await runs.deleteRun({ runId });
  const identity = `warmup-${randomUUID()}`;
  await client.claimPendingSession({ identity, contextId: "c", claimant: "w" });
  await client.completeSessionClaim({ identity, contextId: "c", claimant: "w", sessionId });
  await client.resolveSession({ identity, contextId: "c" });
  await client.listBindings({ identity, pageSize: 1 });
  await client.unbindSession({ identity, contextId: "c" });
}
