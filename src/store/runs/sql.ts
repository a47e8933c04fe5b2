import { col } from "../../db/rows.ts";
import { statement } from "../../db/sql.ts";
import { RunEntity } from "./entities.ts";

/**
 * The run aggregate's SQL: statements that are PostgreSQL-specific (advisory locks, ON CONFLICT,
 * conditional updates that must see and change a row in one step) or hot (progress, terminate).
 * Ordinary reads and writes (get, list, find by request id, delete) go through the ORM in runs.ts.
 */

/** Serializes creates on one thread so that the multitask check and the insert are atomic. */
export const lockThread = statement<[lockKey: string]>()({
  name: "runs.lock_thread",
  text: "select pg_advisory_xact_lock(hashtextextended($1, 0))",
  row: {},
});

type InsertRunParams = [
  tenant: string,
  id: string,
  requestId: string | null,
  requestHash: string | null,
  threadId: string | null,
  sessionId: string | null,
  assistantId: string | null,
  userId: string | null,
  project: string | null,
  modelName: string | null,
  backendProfile: string | null,
  metadataJson: string,
  inputJson: string,
  multitaskStrategy: string,
  version: number,
  labelsJson: string,
  leaseLostPolicy: string,
];

/**
 * Inserts a PENDING run. ON CONFLICT on the request id: a concurrent create with the same
 * request_id that committed first makes this insert return nothing, instead of aborting the
 * transaction with a unique violation.
 */
export const insertRun = statement<InsertRunParams>()({
  name: "runs.insert",
  text: `insert into runs (tenant_id, id, request_id, request_hash, thread_id, session_id, assistant_id, user_id,
           project, model_name, backend_profile, metadata, input, multitask_strategy, status, version, labels,
           lease_lost_policy)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::jsonb, $13::jsonb, $14, 'pending', $15, $16::jsonb,
           $17)
         on conflict (tenant_id, request_id) do nothing
         returning *`,
  row: { run: col.entity(RunEntity) },
});

/** The snapshot columns ($1-$11) that progress and completion may set; NULL keeps the stored value. */
type SnapshotParams = [
  inputTokens: bigint | null,
  outputTokens: bigint | null,
  totalTokens: bigint | null,
  llmCallCount: bigint | null,
  leadAgentTokens: bigint | null,
  subagentTokens: bigint | null,
  middlewareTokens: bigint | null,
  messageCount: bigint | null,
  firstHumanMessage: string | null,
  lastAiMessage: string | null,
  modelName: string | null,
];

/**
 * Stores a progress snapshot of an active run; a PENDING or CLAIMED run becomes RUNNING. With a
 * fence ($15), only while that runner holds the run.
 */
export const updateProgress = statement<
  [...SnapshotParams, tenant: string, runId: string, version: number, fence: string | null]
>()({
  name: "runs.update_progress",
  text: `update runs set input_tokens = coalesce($1, input_tokens), output_tokens = coalesce($2, output_tokens),
           total_tokens = coalesce($3, total_tokens), llm_call_count = coalesce($4, llm_call_count),
           lead_agent_tokens = coalesce($5, lead_agent_tokens), subagent_tokens = coalesce($6, subagent_tokens),
           middleware_tokens = coalesce($7, middleware_tokens), message_count = coalesce($8, message_count),
           first_human_message = coalesce($9, first_human_message), last_ai_message = coalesce($10, last_ai_message),
           model_name = coalesce($11, model_name),
           status = case when status in ('pending', 'claimed') then 'running' else status end,
           started_at = coalesce(started_at, current_timestamp(3)),
           updated_at = clock_timestamp(),
           version = $14
         where tenant_id = $12 and id = $13 and status in ('pending', 'claimed', 'running')
           and ($15::text is null or runner_id = $15)
         returning *`,
  row: { run: col.entity(RunEntity) },
});

/**
 * Moves an active run to a terminal status and reserves the seq of its terminal event
 * (last_seq + 1, under the row lock, like an append). No row back: missing, already terminal, or
 * (with a fence, $18) held by another runner.
 */
export const terminateRun = statement<
  [
    ...SnapshotParams,
    status: string,
    failureKind: string | null,
    failureMessage: string | null,
    tenant: string,
    runId: string,
    version: number,
    fence: string | null,
  ]
>()({
  name: "runs.terminate",
  text: `update runs set input_tokens = coalesce($1, input_tokens), output_tokens = coalesce($2, output_tokens),
           total_tokens = coalesce($3, total_tokens), llm_call_count = coalesce($4, llm_call_count),
           lead_agent_tokens = coalesce($5, lead_agent_tokens), subagent_tokens = coalesce($6, subagent_tokens),
           middleware_tokens = coalesce($7, middleware_tokens), message_count = coalesce($8, message_count),
           first_human_message = coalesce($9, first_human_message), last_ai_message = coalesce($10, last_ai_message),
           model_name = coalesce($11, model_name),
           status = $12, failure_kind = $13, failure_message = $14, runner_id = null, lease_expires_at = null,
           last_seq = last_seq + 1, finished_at = clock_timestamp(), updated_at = clock_timestamp(),
           version = $17
         where tenant_id = $15 and id = $16 and status in ('pending', 'claimed', 'running')
           and ($18::text is null or runner_id = $18)
         returning *`,
  row: { run: col.entity(RunEntity) },
});

/**
 * Token totals of a thread by model. Sums of int8 are numeric in PostgreSQL, so they stay exact
 * however large; the store refuses totals beyond int64 instead of rounding them.
 */
export const threadUsageByModel = statement<[tenant: string, threadId: string, includeActive: boolean]>()({
  name: "runs.thread_usage",
  text: `select coalesce(model_name, '') as model, count(*) as runs,
           sum(input_tokens) as input_tokens, sum(output_tokens) as output_tokens,
           sum(total_tokens) as total_tokens, sum(llm_call_count) as llm_call_count,
           sum(lead_agent_tokens) as lead_agent_tokens, sum(subagent_tokens) as subagent_tokens,
           sum(middleware_tokens) as middleware_tokens
         from runs
         where tenant_id = $1 and thread_id = $2
           and (status in ('completed', 'failed', 'blocked', 'cancelled') or $3)
         group by coalesce(model_name, '')`,
  row: {
    model: col.text("model"),
    runs: col.int64("runs"),
    inputTokens: col.numeric("input_tokens"),
    outputTokens: col.numeric("output_tokens"),
    totalTokens: col.numeric("total_tokens"),
    llmCallCount: col.numeric("llm_call_count"),
    leadAgentTokens: col.numeric("lead_agent_tokens"),
    subagentTokens: col.numeric("subagent_tokens"),
    middlewareTokens: col.numeric("middleware_tokens"),
  },
});

/** The newest version of the tenant's runs stream (0 before the first change). */
export const runsStreamHead = statement<[tenant: string]>()({
  name: "runs.stream_head",
  text: "select coalesce((select version from watch_versions where tenant_id = $1 and stream = 'runs'), 0) as head",
  row: { head: col.safeInt("head") },
});

/**
 * Runs changed after a version, in version order, with the stream's head read in the same
 * snapshot: when the page is not full, the read is complete through that head, also over the
 * versions of runs that changed again later or were deleted. Always at least one row (the head);
 * `run` is null when no run changed.
 */
export const runsChangedAfter = statement<[tenant: string, afterVersion: number, limit: number]>()({
  name: "runs.changed_after",
  text: `select h.head, r.*
         from (select coalesce((select version from watch_versions where tenant_id = $1 and stream = 'runs'), 0) as head) h
         left join lateral (
           select * from runs where tenant_id = $1 and version > $2 order by version limit $3
         ) r on true
         order by r.version`,
  row: { head: col.safeInt("head"), run: col.entityOrNull(RunEntity, "id") },
});

/** The run a claim or release is about, locked, with whether its lease is still running. */
export const lockRun = statement<[tenant: string, runId: string]>()({
  name: "runs.lock",
  text: `select id, status, runner_id, lease_expires_at, coalesce(lease_expires_at > clock_timestamp(), false) as lease_live
         from runs where tenant_id = $1 and id = $2 for update`,
  row: {
    id: col.text("id"),
    status: col.text("status"),
    runnerId: col.textOrNull("runner_id"),
    leaseExpiresAt: col.timestampOrNull("lease_expires_at"),
    leaseLive: col.boolean("lease_live"),
  },
});

/** Gives the locked run to a runner until now + lease (by the database's clock). */
export const claimRun = statement<
  [
    tenant: string,
    runId: string,
    runnerId: string,
    leaseMs: number,
    version: number,
    requestId: string | null,
  ]
>()({
  name: "runs.claim",
  text: `update runs set status = case when status = 'pending' then 'claimed' else status end,
           runner_id = $3, lease_expires_at = clock_timestamp() + make_interval(secs => $4 / 1000.0),
           version = $5, claim_request_id = $6, updated_at = clock_timestamp()
         where tenant_id = $1 and id = $2
         returning *`,
  row: { run: col.entity(RunEntity) },
});

type PendingFilterParams = [
  tenant: string,
  assistantId: string | null,
  backendProfile: string | null,
  project: string | null,
  labelsJson: string,
];

/**
 * The oldest PENDING run that matches, locked; runs another transaction has locked (another
 * runner claiming them right now) are skipped rather than waited for, so racing runners each get
 * a different run. A run waits while an earlier run of its thread is still active (ENQUEUE).
 */
export const nextPendingRun = statement<PendingFilterParams>()({
  name: "runs.next_pending",
  text: `select r.id from runs r
         where r.tenant_id = $1 and r.status = 'pending'
           and ($2::text is null or r.assistant_id = $2)
           and ($3::text is null or r.backend_profile = $3)
           and ($4::text is null or r.project = $4)
           and r.labels @> $5::jsonb
           and not exists (
             select 1 from runs o
             where o.tenant_id = r.tenant_id and o.thread_id = r.thread_id
               and o.status in ('pending', 'claimed', 'running')
               and (o.created_at, o.id) < (r.created_at, r.id))
         order by r.created_at, r.id
         limit 1
         for update skip locked`,
  row: { id: col.text("id") },
});

/** The run a ClaimNextRun with this request id gave the runner, while it still holds it. */
export const claimedByRequest = statement<[tenant: string, runnerId: string, requestId: string]>()({
  name: "runs.claimed_by_request",
  text: `select * from runs
         where tenant_id = $1 and runner_id = $2 and claim_request_id = $3 and status in ('claimed', 'running')`,
  row: { run: col.entity(RunEntity) },
});

/** Whether any pending run matches (no lock): a claim that would find nothing writes nothing. */
export const anyPendingRun = statement<PendingFilterParams>()({
  name: "runs.any_pending",
  text: `select exists (
           select 1 from runs r
           where r.tenant_id = $1 and r.status = 'pending'
             and ($2::text is null or r.assistant_id = $2)
             and ($3::text is null or r.backend_profile = $3)
             and ($4::text is null or r.project = $4)
             and r.labels @> $5::jsonb
         ) as found`,
  row: { found: col.boolean("found") },
});

/** The earliest active run of the thread created before this one, if any (it queues this one). */
export const queuedBehind = statement<[tenant: string, runId: string]>()({
  name: "runs.queued_behind",
  text: `select o.id from runs r join runs o
           on o.tenant_id = r.tenant_id and o.thread_id = r.thread_id
         where r.tenant_id = $1 and r.id = $2 and r.status = 'pending'
           and o.status in ('pending', 'claimed', 'running') and (o.created_at, o.id) < (r.created_at, r.id)
         order by o.created_at, o.id limit 1`,
  row: { id: col.text("id") },
});

/** Extends the holder's lease, saying how late the renewal came if the lease had expired. */
export const renewLease = statement<[tenant: string, runId: string, runnerId: string, leaseMs: number]>()({
  name: "runs.renew_lease",
  text: `with old as (
           select id, lease_expires_at from runs
           where tenant_id = $1 and id = $2 and runner_id = $3 and status in ('claimed', 'running')
           for update
         )
         update runs r set lease_expires_at = clock_timestamp() + make_interval(secs => $4 / 1000.0)
         from old where r.tenant_id = $1 and r.id = old.id
         returning r.*, greatest(0, extract(epoch from clock_timestamp() - old.lease_expires_at) * 1000)::int8 as late_ms`,
  row: { run: col.entity(RunEntity), lateMs: col.safeInt("late_ms") },
});

/** A held run back to PENDING, for any runner (release, deregistration, requeue on lease loss). */
export const unclaimRun = statement<[tenant: string, runId: string, version: number]>()({
  name: "runs.unclaim",
  text: `update runs set status = 'pending', runner_id = null, lease_expires_at = null, claim_request_id = null,
           version = $3, updated_at = clock_timestamp()
         where tenant_id = $1 and id = $2 and status in ('claimed', 'running')
         returning *`,
  row: { run: col.entity(RunEntity) },
});

/**
 * Held runs whose lease ran out more than the grace ago, across tenants, oldest expiry first:
 * candidates, not locked (each is locked by lockExpiredRun after its tenant's runs version).
 */
export const expiredLeases = statement<[graceMs: number, limit: number]>()({
  name: "runs.expired_leases",
  text: `select tenant_id, id, runner_id, lease_lost_policy, lease_expires_at from runs
         where runner_id is not null and status in ('claimed', 'running')
           and lease_expires_at < clock_timestamp() - make_interval(secs => $1 / 1000.0)
         order by lease_expires_at
         limit $2`,
  row: {
    tenant: col.text("tenant_id"),
    id: col.text("id"),
    runnerId: col.text("runner_id"),
    policy: col.text("lease_lost_policy"),
    leaseExpiresAt: col.timestamp("lease_expires_at"),
  },
});

/** A candidate of expiredLeases, locked, if it is still held by that runner and still expired. */
export const lockExpiredRun = statement<[tenant: string, runId: string, runnerId: string, graceMs: number]>()(
  {
    name: "runs.lock_expired",
    text: `select id from runs
         where tenant_id = $1 and id = $2 and runner_id = $3 and status in ('claimed', 'running')
           and lease_expires_at < clock_timestamp() - make_interval(secs => $4 / 1000.0)
         for update skip locked`,
    row: { id: col.text("id") },
  },
);

/** One sweeper at a time across replicas: the lock goes with the transaction. */
export const trySweepLock = statement<[key: number]>()({
  name: "runs.try_sweep_lock",
  text: "select pg_try_advisory_xact_lock($1) as locked",
  row: { locked: col.boolean("locked") },
});
