import { col, rowDecoder } from "../../db/rows.ts";
import { statement } from "../../db/sql.ts";
import { InterruptEntity, SessionBindingEntity, SessionClaimEntity } from "./entities.ts";

/**
 * The sessions aggregate's hot and PostgreSQL-only statements. Reads compute a session's
 * reader-dependent and run-dependent fields (read version, attention order, last event seq,
 * activity of the last run, pending interrupts) in SQL, so that lists can filter and order by them.
 */

/**
 * For the sessions of the runs with these ids, plus the named sessions: what their runs and commands say their execution fields are, beside what the session
 * row holds now (no row: session_exists is false). Runs and commands are ordered by
 * (created_at, id), newest first unless "first". No row when none of the runs has a session.
 */
export const deriveSessions = statement<[tenant: string, runIds: string[], sessionIds: string[]]>()({
  name: "sessions.derive",
  text: `with targets as (
           select session_id as id from runs
           where tenant_id = $1 and session_id is not null and id = any($2::uuid[])
           union select unnest($3::text[])
         )
         select t.id as session_id,
           s.tenant_id is not null as session_exists,
           (s.deleted_at is not null or (s.expires_at is not null and s.expires_at <= clock_timestamp())) as session_gone,
           s.backend_profile as session_profile, s.execution_state, s.active_run_id, s.last_run_id,
           s.active_command_id, s.last_command_id, s.terminal_status, s.failure_kind, s.thread_id,
           s.title, coalesce(s.title_set, false) as title_set,
           lr.id as derived_last_run_id, lr.status as last_run_status, lr.failure_kind as last_run_failure_kind,
           lr.backend_profile as last_run_profile, lr.project as last_run_project,
           ar.id as derived_active_run_id,
           fr.title as first_run_title, th.thread_id as derived_thread_id,
           ac.id as derived_active_command_id, lc.id as derived_last_command_id, ft.prompt as first_turn_prompt
         from targets t
         left join sessions s on s.tenant_id = $1 and s.id = t.id
         left join lateral (select id, status, failure_kind, backend_profile, project from runs
           where tenant_id = $1 and session_id = t.id order by created_at desc, id desc limit 1) lr on true
         left join lateral (select id from runs where tenant_id = $1 and session_id = t.id
           and status in ('pending', 'claimed', 'running') order by created_at desc, id desc limit 1) ar on true
         left join lateral (select metadata->>'title' as title from runs
           where tenant_id = $1 and session_id = t.id order by created_at, id limit 1) fr on true
         left join lateral (select thread_id from runs where tenant_id = $1 and session_id = t.id
           and thread_id is not null order by created_at, id limit 1) th on true
         left join lateral (select c.id from commands c join runs r on r.tenant_id = c.tenant_id and r.id = c.run_id
           where r.tenant_id = $1 and r.session_id = t.id and c.type in ('turn', 'steer')
             and c.state in ('pending', 'acknowledged') order by c.created_at desc, c.id desc limit 1) ac on true
         left join lateral (select c.id from commands c join runs r on r.tenant_id = c.tenant_id and r.id = c.run_id
           where r.tenant_id = $1 and r.session_id = t.id order by c.created_at desc, c.id desc limit 1) lc on true
         left join lateral (select c.payload->>'prompt' as prompt from commands c
           join runs r on r.tenant_id = c.tenant_id and r.id = c.run_id
           where r.tenant_id = $1 and r.session_id = t.id and c.type = 'turn'
           order by c.created_at, c.id limit 1) ft on true`,
  row: {
    sessionId: col.text("session_id"),
    sessionExists: col.boolean("session_exists"),
    sessionGone: col.boolean("session_gone"),
    sessionProfile: col.textOrNull("session_profile"),
    executionState: col.textOrNull("execution_state"),
    activeRunId: col.textOrNull("active_run_id"),
    lastRunId: col.textOrNull("last_run_id"),
    activeCommandId: col.textOrNull("active_command_id"),
    lastCommandId: col.textOrNull("last_command_id"),
    terminalStatus: col.textOrNull("terminal_status"),
    failureKind: col.textOrNull("failure_kind"),
    threadId: col.textOrNull("thread_id"),
    title: col.textOrNull("title"),
    titleSet: col.boolean("title_set"),
    derivedLastRunId: col.textOrNull("derived_last_run_id"),
    lastRunStatus: col.textOrNull("last_run_status"),
    lastRunFailureKind: col.textOrNull("last_run_failure_kind"),
    lastRunProfile: col.textOrNull("last_run_profile"),
    lastRunProject: col.textOrNull("last_run_project"),
    derivedActiveRunId: col.textOrNull("derived_active_run_id"),
    firstRunTitle: col.textOrNull("first_run_title"),
    derivedThreadId: col.textOrNull("derived_thread_id"),
    derivedActiveCommandId: col.textOrNull("derived_active_command_id"),
    derivedLastCommandId: col.textOrNull("derived_last_command_id"),
    firstTurnPrompt: col.textOrNull("first_turn_prompt"),
  },
});

/**
 * Creates a session for its first run, with the execution fields its runs give it, or starts a
 * deleted or expired one afresh (its read cursors and interrupts were removed with it).
 */
export const startSession = statement<
  [
    tenant: string,
    id: string,
    profile: string | null,
    project: string | null,
    version: number,
    executionState: string,
    activeRunId: string | null,
    lastRunId: string | null,
    activeCommandId: string | null,
    lastCommandId: string | null,
    terminalStatus: string | null,
    failureKind: string | null,
    threadId: string | null,
    title: string | null,
  ]
>()({
  name: "sessions.start",
  text: `insert into sessions (tenant_id, id, backend_profile, project, title_set, summary, metadata, version,
           execution_state, active_run_id, last_run_id, active_command_id, last_command_id, terminal_status,
           failure_kind, thread_id, title, last_activity_at, created_at, updated_at)
         values ($1, $2, $3, $4, false, '{}', '{}', $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
           clock_timestamp(), clock_timestamp(), clock_timestamp())
         on conflict (tenant_id, id) do update set backend_profile = $3, project = $4, title_set = false,
           summary = '{}', metadata = '{}', version = $5, execution_state = $6, active_run_id = $7,
           last_run_id = $8, active_command_id = $9, last_command_id = $10, terminal_status = $11,
           failure_kind = $12, thread_id = $13, title = $14, expires_at = null, deleted_at = null,
           last_activity_at = clock_timestamp(), created_at = clock_timestamp(), updated_at = clock_timestamp()`,
  row: {},
});

/** Writes the execution fields the runs and commands gave, at a new version. */
export const applyDerived = statement<
  [
    tenant: string,
    id: string,
    version: number,
    executionState: string,
    activeRunId: string | null,
    lastRunId: string | null,
    activeCommandId: string | null,
    lastCommandId: string | null,
    terminalStatus: string | null,
    failureKind: string | null,
    threadId: string | null,
    title: string | null,
  ]
>()({
  name: "sessions.apply_derived",
  text: `update sessions set version = $3, execution_state = $4, active_run_id = $5, last_run_id = $6,
           active_command_id = $7, last_command_id = $8, terminal_status = $9, failure_kind = $10,
           thread_id = $11, title = case when title_set then title else $12 end,
           last_activity_at = clock_timestamp(), updated_at = clock_timestamp()
         where tenant_id = $1 and id = $2`,
  row: {},
});

/** The columns every session read returns; $reader names the reader (null for none). */
const SESSION_COLUMNS = `s.id, s.backend_profile, s.project, s.thread_id, s.title, s.summary::text as summary,
  s.metadata::text as metadata, s.version,
  s.execution_state, s.active_run_id, s.last_run_id, s.active_command_id, s.last_command_id, s.terminal_status,
  s.failure_kind, s.expires_at, s.created_at, s.updated_at, s.deleted_at is not null as deleted,
  coalesce(lr.last_seq, 0) as last_event_seq,
  greatest(s.last_activity_at, lr.updated_at) as activity,
  coalesce(c.version, 0) as read_version,
  s.execution_state = 'running' as active,
  s.execution_state <> 'running' and coalesce(c.version, 0) < s.version as unread,
  (select count(*) from interrupts i where i.tenant_id = s.tenant_id and i.session_id = s.id and i.state = 'pending'
    and (i.expires_at is null or i.expires_at > clock_timestamp())) as pending_interrupts`;

const SESSION_JOINS = `left join runs lr on lr.tenant_id = s.tenant_id and lr.id = s.last_run_id
  left join session_read_cursors c on c.tenant_id = s.tenant_id and c.session_id = s.id and c.reader_id = $2`;

const LIVE = "s.deleted_at is null and (s.expires_at is null or s.expires_at > clock_timestamp())";

const sessionRow = {
  id: col.text("id"),
  backendProfile: col.textOrNull("backend_profile"),
  project: col.textOrNull("project"),
  threadId: col.textOrNull("thread_id"),
  title: col.textOrNull("title"),
  summaryJson: col.jsonText("summary"),
  metadataJson: col.jsonText("metadata"),
  version: col.safeInt("version"),
  executionState: col.text("execution_state"),
  activeRunId: col.textOrNull("active_run_id"),
  lastRunId: col.textOrNull("last_run_id"),
  activeCommandId: col.textOrNull("active_command_id"),
  lastCommandId: col.textOrNull("last_command_id"),
  terminalStatus: col.textOrNull("terminal_status"),
  failureKind: col.textOrNull("failure_kind"),
  expiresAt: col.timestampOrNull("expires_at"),
  createdAt: col.timestamp("created_at"),
  updatedAt: col.timestamp("updated_at"),
  deleted: col.boolean("deleted"),
  lastEventSeq: col.safeInt("last_event_seq"),
  activity: col.timestamp("activity"),
  readVersion: col.safeInt("read_version"),
  active: col.boolean("active"),
  unread: col.boolean("unread"),
  pendingInterrupts: col.safeInt("pending_interrupts"),
};
export type SessionReadRow = ReturnType<typeof getSession.decode>;

/** One live session, as a reader sees it. */
export const getSession = statement<[tenant: string, reader: string | null, id: string]>()({
  name: "sessions.get",
  text: `select ${SESSION_COLUMNS} from sessions s ${SESSION_JOINS}
         where s.tenant_id = $1 and s.id = $3 and ${LIVE}`,
  row: sessionRow,
});

/**
 * A page of live sessions: active first, then unread, then by activity, newest first, then by id;
 * after a keyset position (active, unread, activity, id) when $6 is not null. $4 is the filter.
 */
export const listSessions = statement<
  [
    tenant: string,
    reader: string | null,
    profile: string | null,
    filter: string,
    limit: number,
    afterActive: boolean | null,
    afterUnread: boolean | null,
    afterActivity: Date | null,
    afterId: string | null,
  ]
>()({
  name: "sessions.list",
  text: `select * from (select ${SESSION_COLUMNS} from sessions s ${SESSION_JOINS}
           where s.tenant_id = $1 and ${LIVE} and ($3::text is null or s.backend_profile = $3)) q
         where case $4::text
             when 'default' then active or unread
             when 'running' then active
             when 'unread' then unread
             when 'terminal' then execution_state = 'terminal'
             when 'idle' then execution_state = 'idle'
             else true end
           and ($6::boolean is null or (active, unread, activity, id) < ($6::boolean, $7::boolean, $8::timestamptz, $9::text))
         order by active desc, unread desc, activity desc, id desc
         limit $5`,
  row: sessionRow,
});

const decodeSession = rowDecoder(sessionRow);

/**
 * Sessions changed after a version, in version order, tombstones included (WatchSessions), with
 * the stream's head read in the same snapshot (see runs.changed_after): always at least one row;
 * `session` is null when no session changed.
 */
export const sessionsChangedAfter = statement<
  [tenant: string, reader: string | null, after: number, limit: number]
>()({
  name: "sessions.changed_after",
  text: `select h.head, q.*
         from (select coalesce((select version from watch_versions where tenant_id = $1 and stream = 'sessions'), 0) as head) h
         left join lateral (
           select ${SESSION_COLUMNS} from sessions s ${SESSION_JOINS}
           where s.tenant_id = $1 and s.version > $3 order by s.version limit $4
         ) q on true
         order by q.version`,
  row: {
    head: col.safeInt("head"),
    session: { decode: (raw, mapEntity) => (raw.id == null ? null : decodeSession(raw, mapEntity)) },
  },
});

/** The newest version of the tenant's sessions stream. */
export const sessionsStreamHead = statement<[tenant: string]>()({
  name: "sessions.stream_head",
  text: "select coalesce((select version from watch_versions where tenant_id = $1 and stream = 'sessions'), 0) as head",
  row: { head: col.safeInt("head") },
});

/** Marks a session deleted at a new version, clearing what it held. */
export const tombstoneSession = statement<[tenant: string, id: string, version: number]>()({
  name: "sessions.tombstone",
  text: `update sessions set deleted_at = clock_timestamp(), version = $3, updated_at = clock_timestamp(),
           summary = '{}', metadata = '{}', title = null
         where tenant_id = $1 and id = $2 and deleted_at is null`,
  row: {},
});

/** Bumps a session's version (an interrupt put or resolved, an update). */
export const touchSession = statement<[tenant: string, id: string, version: number]>()({
  name: "sessions.touch",
  text: `update sessions set version = $3, last_activity_at = clock_timestamp(), updated_at = clock_timestamp()
         where tenant_id = $1 and id = $2`,
  row: {},
});

/** Moves a reader's cursor forward only. */
export const markRead = statement<[tenant: string, id: string, reader: string, version: number]>()({
  name: "sessions.mark_read",
  text: `insert into session_read_cursors (tenant_id, session_id, reader_id, version, read_at)
         values ($1, $2, $3, $4, clock_timestamp())
         on conflict (tenant_id, session_id, reader_id) do update
           set version = greatest(session_read_cursors.version, excluded.version), read_at = excluded.read_at`,
  row: {},
});

/** Runs of a session in creation order after a position (ListSessionEvents across runs). */
export const sessionRunsAfter = statement<
  [tenant: string, sessionId: string, afterCreated: Date | null, afterId: string | null, limit: number]
>()({
  name: "sessions.runs_after",
  text: `select id, created_at from runs where tenant_id = $1 and session_id = $2
           and ($3::timestamptz is null or (created_at, id) > ($3::timestamptz, $4::uuid))
         order by created_at, id limit $5`,
  row: { id: col.text("id"), createdAt: col.timestamp("created_at") },
});

// A2A gateway state: bindings, owners, pending-session claims (gateway.ts).

const claimRow = { claim: col.entity(SessionClaimEntity) };

/** A new claim; no row when the pair has one already. */
export const insertClaim = statement<
  [tenant: string, identity: string, contextId: string, claimant: string, ttlMs: number]
>()({
  name: "session_claims.insert",
  text: `insert into session_claims (tenant_id, identity, context_id, claimant, expires_at, created_at)
         values ($1, $2, $3, $4, clock_timestamp() + $5 * interval '1 millisecond', clock_timestamp())
         on conflict do nothing returning *`,
  row: claimRow,
});

/** Extends the claimant's own claim (live or expired). */
export const claimOwn = statement<
  [tenant: string, identity: string, contextId: string, claimant: string, ttlMs: number]
>()({
  name: "session_claims.extend",
  text: `update session_claims set expires_at = clock_timestamp() + $5 * interval '1 millisecond'
         where tenant_id = $1 and identity = $2 and context_id = $3 and claimant = $4 returning *`,
  row: claimRow,
});

/** Takes over another claimant's expired claim. */
export const claimTake = statement<
  [tenant: string, identity: string, contextId: string, claimant: string, ttlMs: number]
>()({
  name: "session_claims.take_over",
  text: `update session_claims set claimant = $4, expires_at = clock_timestamp() + $5 * interval '1 millisecond',
           created_at = clock_timestamp()
         where tenant_id = $1 and identity = $2 and context_id = $3 and expires_at <= clock_timestamp() returning *`,
  row: claimRow,
});

/** Makes the identity the session's owner unless it has one; returns the owner either way. */
export const ownSession = statement<[tenant: string, sessionId: string, identity: string]>()({
  name: "session_owners.own",
  text: `with inserted as (
           insert into session_owners (tenant_id, session_id, identity) values ($1, $2, $3)
           on conflict do nothing returning identity
         )
         select identity from inserted
         union all
         select identity from session_owners where tenant_id = $1 and session_id = $2
         limit 1`,
  row: { identity: col.text("identity") },
});

/** Binds a pair, replacing its earlier session. */
export const upsertBinding = statement<
  [tenant: string, identity: string, contextId: string, sessionId: string]
>()({
  name: "session_bindings.upsert",
  text: `insert into session_bindings (tenant_id, identity, context_id, session_id, created_at, updated_at)
         values ($1, $2, $3, $4, clock_timestamp(), clock_timestamp())
         on conflict (tenant_id, identity, context_id) do update set session_id = $4, updated_at = clock_timestamp()
         returning *`,
  row: { binding: col.entity(SessionBindingEntity) },
});

/** Frees a session whose last binding went, so that another identity may bind it. */
export const deleteOwnerIfUnbound = statement<[tenant: string, sessionId: string]>()({
  name: "session_owners.release",
  text: `delete from session_owners o where o.tenant_id = $1 and o.session_id = $2
           and not exists (select 1 from session_bindings b where b.tenant_id = $1 and b.session_id = $2)`,
  row: {},
});

// Interrupts (interrupts.ts).

const interruptRow = { interrupt: col.entity(InterruptEntity) };

/** A new interrupt; no row when the id exists already (expired or not). */
export const insertInterrupt = statement<
  [
    tenant: string,
    id: string,
    sessionId: string,
    runId: string | null,
    kind: string,
    payload: string,
    payloadHash: string,
    expiresAt: Date | null,
    ttlMs: number | null,
  ]
>()({
  name: "interrupts.insert",
  text: `insert into interrupts (tenant_id, id, session_id, run_id, kind, payload, payload_hash, state, expires_at, created_at)
         values ($1, $2, $3, $4, $5, $6::jsonb, $7, 'pending',
           coalesce($8::timestamptz, clock_timestamp() + $9 * interval '1 millisecond'), clock_timestamp())
         on conflict do nothing returning *`,
  row: interruptRow,
});

/** The first answer of a live interrupt; no row when it is resolved, expired or missing. */
export const resolveInterrupt = statement<
  [tenant: string, id: string, answer: string, resolvedBy: string | null]
>()({
  name: "interrupts.resolve",
  text: `update interrupts set state = 'resolved', answer = $3::jsonb, resolved_by = $4, resolved_at = clock_timestamp()
         where tenant_id = $1 and id = $2 and state = 'pending'
           and (expires_at is null or expires_at > clock_timestamp())
         returning *`,
  row: interruptRow,
});

/** A live interrupt (not expired). */
export const getInterrupt = statement<[tenant: string, id: string]>()({
  name: "interrupts.get",
  text: `select * from interrupts where tenant_id = $1 and id = $2
           and (expires_at is null or expires_at > clock_timestamp())`,
  row: interruptRow,
});

/** A page of live interrupts of a session and/or a run, oldest first, after (created_at, id). */
export const listInterrupts = statement<
  [
    tenant: string,
    sessionId: string | null,
    runId: string | null,
    pendingOnly: boolean,
    afterCreated: Date | null,
    afterId: string | null,
    limit: number,
  ]
>()({
  name: "interrupts.list",
  text: `select * from interrupts where tenant_id = $1
           and ($2::text is null or session_id = $2) and ($3::uuid is null or run_id = $3)
           and (not $4::boolean or state = 'pending')
           and (expires_at is null or expires_at > clock_timestamp())
           and ($5::timestamptz is null or (created_at, id) > ($5::timestamptz, $6::text))
         order by created_at, id limit $7`,
  row: interruptRow,
});
