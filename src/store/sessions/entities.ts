import { defineEntity, type InferEntity, p } from "@mikro-orm/core";

/**
 * Sessions of a tenant. The execution fields (state, active and last run and command, terminal
 * status, failure kind, thread) are kept by the sessions work hook (sync.ts) in the transaction of
 * every run and command write; the last event seq and the activity of the last run's events are
 * read from the run itself, so that appending events never writes a session row.
 *
 * A deleted session stays as a tombstone (deleted_at set, at a new version) so that watchers
 * resuming after the delete learn of it; every read but WatchSessions skips tombstones.
 */
export const SessionEntity = defineEntity({
  name: "Session",
  tableName: "sessions",
  properties: {
    tenantId: p.text().primary(),
    id: p.text().primary(),
    backendProfile: p.text().nullable(),
    project: p.text().nullable(),
    threadId: p.text().nullable(),
    title: p.text().nullable(),
    /** Set by UpdateSession: the title no longer follows the first run and turn. */
    titleSet: p.boolean().default(false),
    summary: p.json<Record<string, unknown>>(),
    metadata: p.json<Record<string, unknown>>(),
    version: p.bigint("number"),
    executionState: p.text().check("execution_state in ('idle','running','terminal')"),
    activeRunId: p.uuid().nullable(),
    lastRunId: p.uuid().nullable(),
    activeCommandId: p.uuid().nullable(),
    lastCommandId: p.uuid().nullable(),
    terminalStatus: p.text().nullable(),
    failureKind: p.text().nullable(),
    lastActivityAt: p.datetime(3).defaultRaw("current_timestamp(3)"),
    expiresAt: p.datetime(3).nullable(),
    deletedAt: p.datetime(3).nullable(),
    createdAt: p.datetime(3).defaultRaw("current_timestamp(3)"),
    updatedAt: p.datetime(3).defaultRaw("current_timestamp(3)"),
  },
  indexes: [
    { name: "sessions_version_idx", properties: ["tenantId", "version"] },
    { name: "sessions_activity_idx", properties: ["tenantId", "lastActivityAt"] },
  ],
});
export type SessionRow = InferEntity<typeof SessionEntity>;

/** How far each reader has read each session (a version; it never moves back). */
export const SessionReadCursorEntity = defineEntity({
  name: "SessionReadCursor",
  tableName: "session_read_cursors",
  properties: {
    tenantId: p.text().primary(),
    sessionId: p.text().primary(),
    readerId: p.text().primary(),
    version: p.bigint("number"),
    readAt: p.datetime(3).defaultRaw("current_timestamp(3)"),
  },
});

/** A2A gateways' bindings (identity, context_id) -> session_id. */
export const SessionBindingEntity = defineEntity({
  name: "SessionBinding",
  tableName: "session_bindings",
  properties: {
    tenantId: p.text().primary(),
    identity: p.text().primary(),
    contextId: p.text().primary(),
    sessionId: p.text(),
    createdAt: p.datetime(3).defaultRaw("current_timestamp(3)"),
    updatedAt: p.datetime(3).defaultRaw("current_timestamp(3)"),
  },
  indexes: [{ name: "session_bindings_session_idx", properties: ["tenantId", "sessionId"] }],
});
export type SessionBindingRow = InferEntity<typeof SessionBindingEntity>;

/**
 * The identity that owns a bound session: the first to bind it. Its own table, so that a unique
 * key (not a check that two binders could both pass) decides between racing identities.
 */
export const SessionOwnerEntity = defineEntity({
  name: "SessionOwner",
  tableName: "session_owners",
  properties: {
    tenantId: p.text().primary(),
    sessionId: p.text().primary(),
    identity: p.text(),
  },
});

/** Pending-session claims: one claimant per (identity, context_id) while expires_at is ahead. */
export const SessionClaimEntity = defineEntity({
  name: "SessionClaim",
  tableName: "session_claims",
  properties: {
    tenantId: p.text().primary(),
    identity: p.text().primary(),
    contextId: p.text().primary(),
    claimant: p.text(),
    expiresAt: p.datetime(3),
    createdAt: p.datetime(3).defaultRaw("current_timestamp(3)"),
  },
});
export type SessionClaimRow = InferEntity<typeof SessionClaimEntity>;

/** Interrupts (permission requests, questions) of sessions; expired ones are never read. */
export const InterruptEntity = defineEntity({
  name: "Interrupt",
  tableName: "interrupts",
  properties: {
    tenantId: p.text().primary(),
    id: p.text().primary(),
    sessionId: p.text(),
    runId: p.uuid().nullable(),
    kind: p.text(),
    payload: p.json<Record<string, unknown>>(),
    payloadHash: p.text(),
    state: p.text().check("state in ('pending','resolved')"),
    answer: p.json<Record<string, unknown>>().nullable(),
    resolvedBy: p.text().nullable(),
    expiresAt: p.datetime(3).nullable(),
    createdAt: p.datetime(3).defaultRaw("current_timestamp(3)"),
    resolvedAt: p.datetime(3).nullable(),
  },
  indexes: [
    { name: "interrupts_session_idx", properties: ["tenantId", "sessionId", "createdAt", "id"] },
    { name: "interrupts_run_idx", properties: ["tenantId", "runId", "createdAt", "id"] },
  ],
});
export type InterruptRow = InferEntity<typeof InterruptEntity>;

export const sessionEntities = [
  SessionEntity,
  SessionReadCursorEntity,
  SessionBindingEntity,
  SessionOwnerEntity,
  SessionClaimEntity,
  InterruptEntity,
];
