import { col } from "../../db/rows.ts";
import { statement } from "../../db/sql.ts";
import { RunnerEntity } from "./entities.ts";

/**
 * The runner aggregate's SQL: upserts (ON CONFLICT), jsonb label containment and liveness judged
 * by the database's clock (never a replica's), which the ORM does not express.
 */

type RegisterParams = [
  tenant: string,
  id: string,
  labelsJson: string,
  capabilitiesJson: string,
  version: string | null,
  backendProfile: string | null,
];

/** Registers a runner, or registers it again: everything but registered_at is replaced. */
export const upsertRunner = statement<RegisterParams>()({
  name: "runners.upsert",
  text: `insert into runners (tenant_id, id, labels, capabilities, version, backend_profile, registered_at, heartbeat_at)
         values ($1, $2, $3::jsonb, $4::jsonb, $5, $6, clock_timestamp(), clock_timestamp())
         on conflict (tenant_id, id) do update set labels = excluded.labels, capabilities = excluded.capabilities,
           version = excluded.version, backend_profile = excluded.backend_profile, heartbeat_at = clock_timestamp()
         returning *`,
  row: { runner: col.entity(RunnerEntity) },
});

export const touchRunner = statement<[tenant: string, id: string]>()({
  name: "runners.heartbeat",
  text: "update runners set heartbeat_at = clock_timestamp() where tenant_id = $1 and id = $2 returning *",
  row: { runner: col.entity(RunnerEntity) },
});

/**
 * Extends every lease the runner holds to now + lease (the heartbeat's `lease`), saying for each
 * run how late the renewal came if its lease had run out.
 */
export const extendRunnerLeases = statement<[tenant: string, runnerId: string, leaseMs: number]>()({
  name: "runners.extend_leases",
  text: `with held as (
           select id, lease_expires_at from runs
           where tenant_id = $1 and runner_id = $2 and status in ('claimed', 'running')
           order by id for update
         )
         update runs r set lease_expires_at = clock_timestamp() + make_interval(secs => $3 / 1000.0)
         from held where r.tenant_id = $1 and r.id = held.id
         returning r.id, greatest(0, extract(epoch from clock_timestamp() - held.lease_expires_at) * 1000)::int8 as late_ms`,
  row: { id: col.text("id"), lateMs: col.safeInt("late_ms") },
});

/**
 * One runner with its liveness (against $3 ms of silence) and the count of runs it holds, or a
 * page of them ordered by id after $2, filtered by state ($4: 'live', 'stale' or null) and labels.
 */
export const listRunners = statement<
  [
    tenant: string,
    afterId: string | null,
    staleAfterMs: number,
    state: string | null,
    labelsJson: string,
    limit: number,
  ]
>()({
  name: "runners.list",
  text: `select r.*, r.heartbeat_at > clock_timestamp() - make_interval(secs => $3 / 1000.0) as live,
           (select count(*) from runs h where h.tenant_id = r.tenant_id and h.runner_id = r.id
              and h.status in ('claimed', 'running')) as held_runs
         from runners r
         where r.tenant_id = $1 and ($2::text is null or r.id > $2) and r.labels @> $5::jsonb
           and ($4::text is null
             or ($4 = 'live') = (r.heartbeat_at > clock_timestamp() - make_interval(secs => $3 / 1000.0)))
         order by r.id
         limit $6`,
  row: { runner: col.entity(RunnerEntity), live: col.boolean("live"), heldRuns: col.safeInt("held_runs") },
});

export const getRunner = statement<[tenant: string, id: string, staleAfterMs: number]>()({
  name: "runners.get",
  text: `select r.*, r.heartbeat_at > clock_timestamp() - make_interval(secs => $3 / 1000.0) as live,
           (select count(*) from runs h where h.tenant_id = r.tenant_id and h.runner_id = r.id
              and h.status in ('claimed', 'running')) as held_runs
         from runners r where r.tenant_id = $1 and r.id = $2`,
  row: { runner: col.entity(RunnerEntity), live: col.boolean("live"), heldRuns: col.safeInt("held_runs") },
});

/** The runs a runner holds, locked in id order, for releasing them. */
export const heldRunsForUpdate = statement<[tenant: string, runnerId: string]>()({
  name: "runners.held_runs_for_update",
  text: `select id from runs where tenant_id = $1 and runner_id = $2 and status in ('claimed', 'running')
         order by id for update`,
  row: { id: col.text("id") },
});

type JobParams = [
  tenant: string,
  id: string,
  runId: string,
  commandId: string | null,
  runnerId: string,
  attemptId: string | null,
  namespace: string | null,
  jobName: string | null,
  managerUrl: string | null,
  image: string | null,
  sourceCommit: string | null,
  serviceAccount: string | null,
  resultJson: string,
  idempotencyKey: string | null,
  payloadHash: string,
];

/** Records a job; no row back when the run's idempotency key was recorded first (by a race). */
export const insertRunnerJob = statement<JobParams>()({
  name: "runners.insert_job",
  text: `insert into runner_jobs (tenant_id, id, run_id, command_id, runner_id, attempt_id, namespace, job_name,
           manager_url, image, source_commit, service_account, result, idempotency_key, payload_hash)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::jsonb, $14, $15)
         on conflict (tenant_id, run_id, idempotency_key) do nothing
         returning id`,
  row: { id: col.text("id") },
});
