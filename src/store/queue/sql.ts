import { col } from "../../db/rows.ts";
import { statement } from "../../db/sql.ts";
import { QueueReadCursorEntity, QueueTaskEntity } from "./entities.ts";

/**
 * The queue aggregate's SQL: the hot statements of the worker loop (enqueue, claim, complete,
 * fail), which must each be one round trip, and the statements that need PostgreSQL itself (SKIP
 * LOCKED, ON CONFLICT, data-modifying CTEs, one-snapshot reads). Batches travel as one JSON
 * parameter, expanded by jsonb_to_recordset, so that a batch of any size is one prepared
 * statement. Ordinary reads (get, list, dead tasks) and the schedules go through the ORM.
 *
 * Every statement that takes a task out of CLAIMED/RUNNING also frees its serial lane
 * (`queue_lanes.held_task_id`), in the same statement.
 */

const task = { task: col.entity(QueueTaskEntity) };

/** Inserts a batch; a task whose (queue, idempotency key) exists already is skipped (not returned). */
export const insertTasks = statement<[tenant: string, tasksJson: string]>()({
  name: "queue.insert_tasks",
  text: `insert into queue_tasks (tenant_id, id, queue, lane, priority, payload, idempotency_key, payload_hash,
           state, serial, run_at, attempts, max_attempts, backoff_initial_ms, backoff_max_ms, timeout_ms,
           schedule_id, version, created_at, updated_at)
         select $1, r.id, r.queue, r.lane, r.priority, r.payload, r.idempotency_key, r.payload_hash,
           'pending', r.serial, coalesce(r.run_at, now()), 0, r.max_attempts, r.backoff_initial_ms,
           r.backoff_max_ms, r.timeout_ms, r.schedule_id, r.version, now(), now()
         from jsonb_to_recordset($2::jsonb) as r(id uuid, queue text, lane text, priority int, payload jsonb,
           idempotency_key text, payload_hash text, serial boolean, run_at timestamptz, max_attempts int,
           backoff_initial_ms int, backoff_max_ms int, timeout_ms int, schedule_id text, version int8)
         on conflict (tenant_id, queue, idempotency_key) where idempotency_key is not null do nothing
         returning *`,
  row: task,
});

/** Tasks by (queue, idempotency key) pairs: the ones an insert skipped. */
export const tasksByKeys = statement<[tenant: string, keysJson: string]>()({
  name: "queue.tasks_by_keys",
  text: `select t.* from queue_tasks t
         join jsonb_to_recordset($2::jsonb) as k(queue text, key text)
           on t.tenant_id = $1 and t.queue = k.queue and t.idempotency_key = k.key`,
  row: task,
});

/** Replaces a PENDING task's definition in place (EnqueueTask with replace). */
export const replaceTask = statement<[tenant: string, taskJson: string]>()({
  name: "queue.replace_task",
  text: `update queue_tasks t set lane = r.lane, priority = r.priority, payload = r.payload,
           payload_hash = r.payload_hash, serial = r.serial, run_at = coalesce(r.run_at, now()),
           max_attempts = r.max_attempts, backoff_initial_ms = r.backoff_initial_ms,
           backoff_max_ms = r.backoff_max_ms, timeout_ms = r.timeout_ms, version = r.version, updated_at = now()
         from jsonb_to_record($2::jsonb) as r(id uuid, lane text, priority int, payload jsonb, payload_hash text,
           serial boolean, run_at timestamptz, max_attempts int, backoff_initial_ms int, backoff_max_ms int,
           timeout_ms int, version int8)
         where t.tenant_id = $1 and t.id = r.id and t.state = 'pending'
         returning t.*`,
  row: task,
});

/** Makes sure the serial lanes of an enqueue have their lock rows. */
export const ensureLanes = statement<[tenant: string, lanesJson: string]>()({
  name: "queue.ensure_lanes",
  text: `insert into queue_lanes (tenant_id, queue, lane)
         select distinct $1, l.queue, l.lane from jsonb_to_recordset($2::jsonb) as l(queue text, lane text)
         on conflict do nothing`,
  row: {},
});

/**
 * Whether a claim could find a task now, and when the next delayed one falls due: read without
 * any lock, so that a waiting worker's empty looks cost one index probe.
 */
export const probeDue = statement<[tenant: string, queue: string, lanesJson: string | null]>()({
  name: "queue.probe_due",
  text: `select
           exists (select 1 from queue_tasks where tenant_id = $1 and queue = $2 and state = 'pending'
                   and run_at <= clock_timestamp()
                   and ($3::jsonb is null or lane in (select jsonb_array_elements_text($3::jsonb)))) as due,
           (select min(run_at) from queue_tasks where tenant_id = $1 and queue = $2 and state = 'pending'
                   and run_at > clock_timestamp()
                   and ($3::jsonb is null or lane in (select jsonb_array_elements_text($3::jsonb)))) as next_due`,
  row: { due: col.boolean("due"), nextDue: col.timestampOrNull("next_due") },
});

/**
 * Claims up to $4 due PENDING tasks, most urgent first. Two guards keep a task from being taken
 * twice. The caller holds the tenant's queue version lock, so the claims of a tenant run one after
 * another and each statement's snapshot sees the claims committed before it. And the rows are
 * locked FOR UPDATE SKIP LOCKED: a row another transaction holds is skipped, and a row it changed
 * is re-checked against `state = 'pending'` before it is taken, so exclusivity would hold without
 * the version lock too (the 64-worker test goes red only when both are removed).
 *
 * Serial lanes: a serial task is taken only with its lane's lock row, locked SKIP LOCKED and free
 * (held_task_id null), and the claim sets held_task_id in the same statement. A racing claim
 * either skips the locked lane row or, once the first committed, re-reads it and finds it held.
 * (A check of "no held task in the lane" alone would read a snapshot from before the other claim
 * committed.) At most one task per serial lane is taken.
 *
 * The lease never reaches past the attempt's deadline (claim time + timeout); versions $7, $7+1, ...
 * were taken by the caller under the tenant's version lock.
 */
export const claimTasks = statement<
  [
    tenant: string,
    queue: string,
    lanesJson: string | null,
    limit: number,
    workerId: string,
    leaseMs: number,
    firstVersion: number,
  ]
>()({
  name: "queue.claim_tasks",
  text: `with free_lanes as (
           select l.lane from queue_lanes l
           where l.tenant_id = $1 and l.queue = $2 and l.held_task_id is null
             and ($3::jsonb is null or l.lane in (select jsonb_array_elements_text($3::jsonb)))
           for update of l skip locked
         ),
         picked as (
           select t.id, t.serial, t.lane, t.priority, t.run_at from queue_tasks t
           where t.tenant_id = $1 and t.queue = $2 and t.state = 'pending' and t.run_at <= clock_timestamp()
             and ($3::jsonb is null or t.lane in (select jsonb_array_elements_text($3::jsonb)))
             and (not t.serial or t.lane in (select lane from free_lanes))
           order by t.priority desc, t.run_at, t.id
           limit $4
           for update of t skip locked
         ),
         chosen as (
           select id, serial, lane, row_number() over (order by priority desc, run_at, id) - 1 as n
           from (select p.*, row_number() over (
                   partition by case when p.serial then p.lane end order by p.priority desc, p.run_at, p.id) as in_lane
                 from picked p) x
           where not serial or in_lane = 1
         ),
         held_lanes as (
           update queue_lanes l set held_task_id = c.id from chosen c
           where c.serial and l.tenant_id = $1 and l.queue = $2 and l.lane = c.lane
         )
         update queue_tasks t set state = 'claimed', worker_id = $5, attempts = t.attempts + 1,
           attempt_deadline = clock_timestamp() + make_interval(secs => t.timeout_ms / 1000.0),
           lease_expires_at = least(clock_timestamp() + make_interval(secs => $6 / 1000.0),
                                    clock_timestamp() + make_interval(secs => t.timeout_ms / 1000.0)),
           version = $7 + c.n, updated_at = now()
         from chosen c where t.tenant_id = $1 and t.id = c.id
         returning t.*`,
  row: task,
});

/**
 * Extends the holder's lease, never past the attempt's deadline; nothing when the worker does not
 * hold the task or the attempt has timed out (the caller then finds out which).
 */
export const renewTask = statement<[tenant: string, taskId: string, workerId: string, leaseMs: number]>()({
  name: "queue.renew_task",
  text: `update queue_tasks set lease_expires_at = least(clock_timestamp() + make_interval(secs => $4 / 1000.0),
           attempt_deadline)
         where tenant_id = $1 and id = $2 and worker_id = $3 and state in ('claimed', 'running')
           and (attempt_deadline is null or attempt_deadline > clock_timestamp())
         returning *`,
  row: task,
});

/** Completes the listed tasks the worker holds: [{id, result, version}]. */
export const completeTasks = statement<[tenant: string, workerId: string, itemsJson: string]>()({
  name: "queue.complete_tasks",
  text: `with items as (
           select * from jsonb_to_recordset($3::jsonb) as i(id uuid, result jsonb, version int8)
         ),
         done as (
           update queue_tasks t set state = 'completed', result = i.result, worker_id = null, lease_expires_at = null,
             attempt_deadline = null, finished_at = now(), version = i.version, updated_at = now()
           from items i
           where t.tenant_id = $1 and t.id = i.id and t.worker_id = $2 and t.state in ('claimed', 'running')
           returning t.*
         ),
         freed as (
           update queue_lanes l set held_task_id = null from done d
           where d.serial and l.tenant_id = $1 and l.queue = d.queue and l.lane = d.lane and l.held_task_id = d.id
         )
         select * from done`,
  row: task,
});

/**
 * Fails the holder's attempt: PENDING again after the retry delay ($6, else the backoff:
 * min(max, initial * 2^(attempts-1)), less up to half at random) while attempts remain and retry
 * is allowed, else DEAD.
 */
export const failTask = statement<
  [
    tenant: string,
    taskId: string,
    workerId: string,
    error: string,
    noRetry: boolean,
    retryDelayMs: number | null,
    version: number,
  ]
>()({
  name: "queue.fail_task",
  text: `with done as (
           update queue_tasks t set
             state = case when $5::boolean or t.attempts >= t.max_attempts then 'dead' else 'pending' end,
             run_at = case when $5::boolean or t.attempts >= t.max_attempts then t.run_at
                      else clock_timestamp() + make_interval(secs => coalesce($6::float8,
                        least(t.backoff_max_ms::float8, t.backoff_initial_ms * power(2::float8, least(t.attempts - 1, 40)))
                          * (1 - random() / 2)) / 1000.0) end,
             finished_at = case when $5::boolean or t.attempts >= t.max_attempts then now() end,
             last_error = $4, worker_id = null, lease_expires_at = null, attempt_deadline = null,
             version = $7, updated_at = now()
           where t.tenant_id = $1 and t.id = $2 and t.worker_id = $3 and t.state in ('claimed', 'running')
           returning t.*
         ),
         freed as (
           update queue_lanes l set held_task_id = null from done d
           where d.serial and l.tenant_id = $1 and l.queue = d.queue and l.lane = d.lane and l.held_task_id = d.id
         )
         select * from done`,
  row: task,
});

/** Cancels a task that has not ended. */
export const cancelTask = statement<[tenant: string, taskId: string, reason: string, version: number]>()({
  name: "queue.cancel_task",
  text: `with old as (
           select id, serial, queue, lane from queue_tasks
           where tenant_id = $1 and id = $2 and state in ('pending', 'claimed', 'running') for update
         ),
         done as (
           update queue_tasks t set state = 'cancelled', cancel_reason = $3, worker_id = null, lease_expires_at = null,
             attempt_deadline = null, finished_at = now(), version = $4, updated_at = now()
           from old where t.tenant_id = $1 and t.id = old.id
           returning t.*
         ),
         freed as (
           update queue_lanes l set held_task_id = null from done d
           where d.serial and l.tenant_id = $1 and l.queue = d.queue and l.lane = d.lane and l.held_task_id = d.id
         )
         select * from done`,
  row: task,
});

/**
 * Records the attempt (latest_attempt, session_path: NULL keeps them) and the state: RUNNING or
 * an end. With a worker ($3), only while it holds the task; without, any task that has not ended.
 */
export const updateAttempt = statement<
  [
    tenant: string,
    taskId: string,
    workerId: string | null,
    state: string | null,
    latestAttemptJson: string | null,
    sessionPath: string | null,
    version: number,
  ]
>()({
  name: "queue.update_attempt",
  text: `with done as (
           update queue_tasks t set state = coalesce($4, t.state),
             latest_attempt = coalesce($5::jsonb, t.latest_attempt), session_path = coalesce($6, t.session_path),
             worker_id = case when $4 in ('completed', 'failed', 'blocked') then null else t.worker_id end,
             lease_expires_at = case when $4 in ('completed', 'failed', 'blocked') then null else t.lease_expires_at end,
             attempt_deadline = case when $4 in ('completed', 'failed', 'blocked') then null else t.attempt_deadline end,
             finished_at = case when $4 in ('completed', 'failed', 'blocked') then now() end,
             version = $7, updated_at = now()
           where t.tenant_id = $1 and t.id = $2 and t.state in ('pending', 'claimed', 'running')
             and ($3::text is null or (t.worker_id = $3 and t.state in ('claimed', 'running')))
           returning t.*
         ),
         freed as (
           update queue_lanes l set held_task_id = null from done d
           where d.serial and d.state not in ('claimed', 'running')
             and l.tenant_id = $1 and l.queue = d.queue and l.lane = d.lane and l.held_task_id = d.id
         )
         select * from done`,
  row: task,
});

/** Tenants with held tasks whose lease has expired, for the sweeper (no locks). */
export const tenantsWithExpiredLeases = statement<[limit: number]>()({
  name: "queue.expired_tenants",
  text: `select distinct tenant_id from (
           select tenant_id from queue_tasks
           where state in ('claimed', 'running') and lease_expires_at <= clock_timestamp()
           order by lease_expires_at limit 1000) e
         limit $1`,
  row: { tenantId: col.text("tenant_id") },
});

/** A tenant's held tasks whose lease has expired, locked (SKIP LOCKED: a completing holder wins). */
export const lockExpired = statement<[tenant: string, limit: number]>()({
  name: "queue.lock_expired",
  text: `select id from queue_tasks
         where tenant_id = $1 and state in ('claimed', 'running') and lease_expires_at <= clock_timestamp()
         order by lease_expires_at, id limit $2
         for update skip locked`,
  row: { id: col.text("id") },
});

/**
 * Gives back expired tasks ([{id, version}], locked by lockExpired): PENDING and due at once while
 * attempts remain, else DEAD; the error says whether the lease ran out or the attempt timed out.
 */
export const expireTasks = statement<[tenant: string, itemsJson: string]>()({
  name: "queue.expire_tasks",
  text: `with items as (
           select * from jsonb_to_recordset($2::jsonb) as i(id uuid, version int8)
         ),
         done as (
           update queue_tasks t set
             state = case when t.attempts >= t.max_attempts then 'dead' else 'pending' end,
             run_at = case when t.attempts >= t.max_attempts then t.run_at else now() end,
             finished_at = case when t.attempts >= t.max_attempts then now() end,
             last_error = case when t.attempt_deadline <= clock_timestamp() then 'timed out' else 'lease expired' end,
             worker_id = null, lease_expires_at = null, attempt_deadline = null,
             version = i.version, updated_at = now()
           from items i
           where t.tenant_id = $1 and t.id = i.id and t.state in ('claimed', 'running')
             and t.lease_expires_at <= clock_timestamp()
           returning t.*
         ),
         freed as (
           update queue_lanes l set held_task_id = null from done d
           where d.serial and l.tenant_id = $1 and l.queue = d.queue and l.lane = d.lane and l.held_task_id = d.id
         )
         select * from done`,
  row: task,
});

/** DEAD tasks to redrive, locked: the ones named ($2), else the queue's ($3) oldest deaths. */
export const lockDead = statement<
  [tenant: string, idsJson: string | null, queue: string | null, limit: number]
>()({
  name: "queue.lock_dead",
  text: `select id from queue_tasks
           where tenant_id = $1 and state = 'dead'
             and ($2::jsonb is null or id in (select (jsonb_array_elements_text($2::jsonb))::uuid))
             and ($3::text is null or queue = $3)
           order by finished_at, id limit $4
           for update`,
  row: { id: col.text("id") },
});

/** DEAD tasks ([{id, version}]) PENDING again, due now, with their attempts reset. */
export const redriveTasks = statement<[tenant: string, itemsJson: string]>()({
  name: "queue.redrive_tasks",
  text: `update queue_tasks t set state = 'pending', attempts = 0, run_at = now(), finished_at = null,
           version = i.version, updated_at = now()
         from jsonb_to_recordset($2::jsonb) as i(id uuid, version int8)
         where t.tenant_id = $1 and t.id = i.id and t.state = 'dead'
         returning t.*`,
  row: task,
});

/** Records that a reader saw the task at its current version. */
export const markRead = statement<[tenant: string, taskId: string, readerId: string]>()({
  name: "queue.mark_read",
  text: `insert into queue_read_cursors (tenant_id, task_id, reader_id, version, read_at)
         select tenant_id, id, $3, version, now() from queue_tasks where tenant_id = $1 and id = $2
         on conflict (tenant_id, task_id, reader_id) do update set version = excluded.version, read_at = excluded.read_at
         returning *`,
  row: { cursor: col.entity(QueueReadCursorEntity) },
});

/**
 * The stats of a queue (or every queue, $2 null) and its $3 most urgent unfinished tasks, from one
 * statement, hence one snapshot: the counts and the tasks always agree. One row per task (the
 * stats repeated), or one row with no task.
 */
export const queueSnapshot = statement<[tenant: string, queue: string | null, top: number]>()({
  name: "queue.snapshot",
  text: `with scope as (
           select state, lane, run_at from queue_tasks where tenant_id = $1 and ($2::text is null or queue = $2)
         ),
         stats as (
           select
             (select coalesce(jsonb_agg(jsonb_build_array(state, lane, n)), '[]'::jsonb)::text
                from (select state, lane, count(*) as n from scope group by state, lane) g) as groups,
             (select count(*) from scope where state = 'pending' and run_at <= now()) as due,
             (select (extract(epoch from now() - min(run_at)) * 1000)::int8 from scope
                where state = 'pending' and run_at <= now()) as oldest_due_ms,
             coalesce((select version from watch_versions where tenant_id = $1 and stream = 'queue_tasks'), 0)
               as max_version,
             now() as generated_at
         )
         select s.*, t.* from stats s
         left join lateral (
           select * from queue_tasks where tenant_id = $1 and ($2::text is null or queue = $2)
             and state in ('pending', 'claimed', 'running')
           order by priority desc, run_at, id limit $3
         ) t on true
         order by t.priority desc, t.run_at, t.id`,
  row: {
    groups: col.jsonText("groups"),
    due: col.safeInt("due"),
    oldestDueMs: col.safeIntOrNull("oldest_due_ms"),
    maxVersion: col.safeInt("max_version"),
    generatedAt: col.timestamp("generated_at"),
    task: col.entityOrNull(QueueTaskEntity, "id"),
  },
});

export const tasksStreamHead = statement<[tenant: string]>()({
  name: "queue.stream_head",
  text: "select coalesce((select version from watch_versions where tenant_id = $1 and stream = 'queue_tasks'), 0) as head",
  row: { head: col.safeInt("head") },
});

/**
 * Tasks changed after a version, in version order, with the stream's head read in the same
 * snapshot (see runs.changed_after): always at least one row; `task` is null when none changed.
 */
export const tasksChangedAfter = statement<[tenant: string, afterVersion: number, limit: number]>()({
  name: "queue.changed_after",
  text: `select h.head, t.*
         from (select coalesce((select version from watch_versions where tenant_id = $1 and stream = 'queue_tasks'), 0) as head) h
         left join lateral (
           select * from queue_tasks where tenant_id = $1 and version > $2 order by version limit $3
         ) t on true
         order by t.version`,
  row: { head: col.safeInt("head"), task: col.entityOrNull(QueueTaskEntity, "id") },
});

/** Due schedules across tenants, locked SKIP LOCKED: one replica fires each tick. */
export const lockDueSchedules = statement<[limit: number]>()({
  name: "queue.lock_due_schedules",
  text: `select tenant_id, id from queue_schedules where next_run_at <= clock_timestamp()
         order by tenant_id, id limit $1
         for update skip locked`,
  row: { tenantId: col.text("tenant_id"), id: col.text("id") },
});

/**
 * Hands claimed tasks ([{id, version}]) back as if never claimed: their claiming call went away
 * before it could answer, so no worker will work on them.
 */
export const returnTasks = statement<[tenant: string, workerId: string, itemsJson: string]>()({
  name: "queue.return_tasks",
  text: `with done as (
           update queue_tasks t set state = 'pending', attempts = t.attempts - 1, worker_id = null,
             lease_expires_at = null, attempt_deadline = null, version = i.version, updated_at = now()
           from jsonb_to_recordset($3::jsonb) as i(id uuid, version int8)
           where t.tenant_id = $1 and t.id = i.id and t.worker_id = $2 and t.state = 'claimed'
           returning t.*
         ),
         freed as (
           update queue_lanes l set held_task_id = null from done d
           where d.serial and l.tenant_id = $1 and l.queue = d.queue and l.lane = d.lane and l.held_task_id = d.id
         )
         select * from done`,
  row: task,
});

/** Whether any schedule is due: the ticker's look outside a transaction, nearly always false. */
export const anyDueSchedule = statement<[]>()({
  name: "queue.any_due_schedule",
  text: "select exists (select 1 from queue_schedules where next_run_at <= clock_timestamp()) as due",
  row: { due: col.boolean("due") },
});
