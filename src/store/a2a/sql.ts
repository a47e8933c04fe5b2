import { col } from "../../db/rows.ts";
import { statement } from "../../db/sql.ts";
import { A2aConversationEntity, A2aPushDeliveryEntity, A2aTaskEntity } from "./entities.ts";

/**
 * The A2A aggregate's SQL: the statements that need PostgreSQL itself (ON CONFLICT as "lock or
 * create", a lateral read of a log with its owner's state in one snapshot, batched sweeps with
 * SKIP LOCKED). Reads, lists and the plain writes of a locked row go through the ORM.
 */

/**
 * Locks the task row, creating a placeholder (generation 0) when there is none, so that two first
 * saves of one id queue on the row lock instead of one failing on the primary key. The placeholder
 * is either filled in by the same transaction or rolled back with it; nobody else ever sees it.
 */
export const lockOrCreateTask = statement<[tenant: string, id: string]>()({
  name: "a2a.lock_or_create_task",
  text: `insert into a2a_tasks (tenant_id, id, body, generation, update_seq)
         values ($1, $2, '\\x'::bytea, 0, 0)
         on conflict (tenant_id, id) do update set generation = a2a_tasks.generation
         returning *`,
  row: { task: col.entity(A2aTaskEntity) },
});

/** Locks an existing task row for a write. */
export const lockTask = statement<[tenant: string, id: string]>()({
  name: "a2a.lock_task",
  text: "select * from a2a_tasks where tenant_id = $1 and id = $2 and generation > 0 for update",
  row: { task: col.entity(A2aTaskEntity) },
});

/**
 * A page of a task's update log after a seq, with whether the task is still there (not deleted,
 * not expired at $5) and its newest seq, from one snapshot: a stream learns in the same read that
 * its task is gone. Entries are kept while the ones before them fit in $6 bytes (the first always
 * does): a log of whole-task snapshots can hold megabytes per entry.
 */
export const readUpdates = statement<
  [tenant: string, id: string, after: number, limit: number, now: Date, maxBytes: number]
>()({
  name: "a2a.read_updates",
  text: `select t.update_seq, (t.expires_at is null or t.expires_at > $5::timestamptz) as live,
           u.seq, u.terminal, u.body
         from a2a_tasks t
         left join lateral (
           select sized.seq, sized.terminal, sized.body from (
             select x.seq, x.terminal, x.body,
               sum(octet_length(x.body)) over (order by x.seq) - octet_length(x.body) as bytes_before
             from (
               select seq, terminal, body from a2a_task_updates
               where tenant_id = t.tenant_id and task_id = t.id and seq > $3
               order by seq limit $4
             ) x
           ) sized
           where sized.bytes_before < $6
         ) u on true
         where t.tenant_id = $1 and t.id = $2 and t.generation > 0
         order by u.seq`,
  row: {
    updateSeq: col.safeInt("update_seq"),
    live: col.boolean("live"),
    seq: col.safeIntOrNull("seq"),
    terminal: col.booleanOrNull("terminal"),
    body: col.bytesOrNull("body"),
  },
});

/** Share-locks an existing task row: its push configs change while it can be neither deleted nor swept. */
export const shareTask = statement<[tenant: string, id: string]>()({
  name: "a2a.share_task",
  text: "select * from a2a_tasks where tenant_id = $1 and id = $2 and generation > 0 for share",
  row: { task: col.entity(A2aTaskEntity) },
});

/**
 * Deletes up to $2 tasks expired at $1 with their update logs, push configs and deliveries; rows a
 * writer holds wait for the next sweep.
 */
export const sweepTasks = statement<[now: Date, limit: number]>()({
  name: "a2a.sweep_tasks",
  text: `with doomed as (
           select tenant_id, id from a2a_tasks where expires_at <= $1::timestamptz
           limit $2 for update skip locked
         ),
         updates as (
           delete from a2a_task_updates u using doomed d where u.tenant_id = d.tenant_id and u.task_id = d.id
         ),
         push_configs as (
           delete from a2a_push_configs c using doomed d where c.tenant_id = d.tenant_id and c.task_id = d.id
         ),
         push_deliveries as (
           delete from a2a_push_deliveries p using doomed d where p.tenant_id = d.tenant_id and p.task_id = d.id
         )
         delete from a2a_tasks t using doomed d where t.tenant_id = d.tenant_id and t.id = d.id
         returning t.tenant_id`,
  row: { tenantId: col.text("tenant_id") },
});

/** Locks the conversation row, creating an empty one when there is none (see lockOrCreateTask). */
export const lockOrCreateConversation = statement<[tenant: string, contextId: string]>()({
  name: "a2a.lock_or_create_conversation",
  text: `insert into a2a_conversations (tenant_id, context_id, message_count, last_position)
         values ($1, $2, 0, 0)
         on conflict (tenant_id, context_id) do update set message_count = a2a_conversations.message_count
         returning *`,
  row: { conversation: col.entity(A2aConversationEntity) },
});

/** Deletes up to $2 conversations idle past their expiry at $1 with their messages. */
export const sweepConversations = statement<[now: Date, limit: number]>()({
  name: "a2a.sweep_conversations",
  text: `with doomed as (
           select tenant_id, context_id from a2a_conversations where expires_at <= $1::timestamptz
           limit $2 for update skip locked
         ),
         messages as (
           delete from a2a_conversation_messages m using doomed d
           where m.tenant_id = d.tenant_id and m.context_id = d.context_id
         )
         delete from a2a_conversations c using doomed d
         where c.tenant_id = d.tenant_id and c.context_id = d.context_id
         returning c.tenant_id`,
  row: { tenantId: col.text("tenant_id") },
});

/** Counts over a tenant's live conversations, in one snapshot. */
export const conversationStats = statement<[tenant: string, now: Date]>()({
  name: "a2a.conversation_stats",
  text: `select count(*) as conversations, coalesce(sum(message_count), 0) as messages,
           min(last_access_at) as oldest, max(last_access_at) as newest
         from a2a_conversations
         where tenant_id = $1 and (expires_at is null or expires_at > $2::timestamptz)`,
  row: {
    conversations: col.safeInt("conversations"),
    messages: col.safeInt("messages"),
    oldest: col.timestampOrNull("oldest"),
    newest: col.timestampOrNull("newest"),
  },
});

const delivery = { delivery: col.entity(A2aPushDeliveryEntity) };

/**
 * Locks the push configs of a task (FOR NO KEY UPDATE), in the transaction of an update of it
 * before its deliveries are made, and in the transaction that finishes a delivery before the
 * config's next one is made due: the two then see each other's rows (see insertDeliveries).
 */
export const lockTaskConfigs = statement<[tenant: string, taskId: string]>()({
  name: "a2a.lock_task_configs",
  text: `select id from a2a_push_configs where tenant_id = $1 and task_id = $2
         order by id for no key update`,
  row: { id: col.text("id") },
});

/** Locks one push config (see lockTaskConfigs). */
export const lockConfig = statement<[tenant: string, taskId: string, id: string]>()({
  name: "a2a.lock_config",
  text: "select id from a2a_push_configs where tenant_id = $1 and task_id = $2 and id = $3 for no key update",
  row: { id: col.text("id") },
});

/**
 * One delivery per push config of the task and per seq from $3 to $4: called in the transaction
 * that appended those seqs, under the task's row lock (config writes share-lock the row, so the
 * set of configs cannot change meanwhile) and the configs' locks (lockTaskConfigs, taken in an
 * earlier statement, so that this one's snapshot holds every delivery finished before). A
 * config's first new delivery is due now when none of its deliveries is PENDING or SENDING;
 * every other waits (next_attempt_at null) for the one before it to finish. Answers how many it
 * made.
 */
export const insertDeliveries = statement<
  [tenant: string, taskId: string, firstSeq: number, lastSeq: number, maxAttempts: number]
>()({
  name: "a2a.insert_deliveries",
  text: `with made as (
           insert into a2a_push_deliveries (tenant_id, id, task_id, config_id, seq, state, attempts, max_attempts,
             next_attempt_at, created_at, updated_at)
           select $1, gen_random_uuid(), $2, c.id, s.seq, 'pending', 0, $5,
             case when s.seq = $3 and not exists (
                 select 1 from a2a_push_deliveries e
                 where e.tenant_id = $1 and e.task_id = $2 and e.config_id = c.id and e.state in ('pending', 'sending'))
               then now() end,
             now(), now()
           from a2a_push_configs c cross join generate_series($3::int8, $4::int8) as s(seq)
           where c.tenant_id = $1 and c.task_id = $2
           returning 1
         )
         select count(*) as made from made`,
  row: { made: col.safeInt("made") },
});

/**
 * Takes up to $1 deliveries due now, across tenants, for worker $2 until its lease ($3 ms) runs
 * out: PENDING ones due, and SENDING ones whose sender's lease ran out (it died). Only the head
 * of each (task, config) is taken, the delivery with no earlier one still PENDING or SENDING, so
 * one config's deliveries go out one at a time in seq order. SKIP LOCKED keeps two replicas
 * from taking one delivery; a row another replica took and committed meanwhile is re-checked
 * against the state condition and skipped.
 *
 * Each row comes with what sending it needs, from the same statement: its config (url, sealed
 * token and credentials; null when the config is gone), the update's stored body, and whether
 * the task is live (null: gone).
 */
export const claimDeliveries = statement<[limit: number, workerId: string, leaseMs: number]>()({
  name: "a2a.claim_deliveries",
  text: `with picked as (
           select d.tenant_id, d.id, d.task_id, d.config_id, d.seq from a2a_push_deliveries d
           where ((d.state = 'pending' and d.next_attempt_at <= clock_timestamp())
               or (d.state = 'sending' and d.lease_expires_at <= clock_timestamp()))
             and not exists (
               select 1 from a2a_push_deliveries e
               where e.tenant_id = d.tenant_id and e.task_id = d.task_id and e.config_id = d.config_id
                 and e.seq < d.seq and e.state in ('pending', 'sending'))
           order by d.next_attempt_at, d.seq
           limit $1
           for update of d skip locked
         )
         update a2a_push_deliveries d set state = 'sending', worker_id = $2, attempts = d.attempts + 1,
           lease_expires_at = clock_timestamp() + make_interval(secs => $3 / 1000.0), updated_at = now()
         from picked p
           left join a2a_push_configs c
             on c.tenant_id = p.tenant_id and c.task_id = p.task_id and c.id = p.config_id
           left join a2a_tasks t on t.tenant_id = p.tenant_id and t.id = p.task_id and t.generation > 0
           left join a2a_task_updates u on u.tenant_id = p.tenant_id and u.task_id = p.task_id and u.seq = p.seq
         where d.tenant_id = p.tenant_id and d.id = p.id
         returning d.*, c.url as config_url, c.token as config_token, c.scheme as config_scheme,
           c.credentials as config_credentials, u.body as update_body,
           (t.expires_at is null or t.expires_at > clock_timestamp()) and t.id is not null as task_live`,
  row: {
    ...delivery,
    configUrl: col.textOrNull("config_url"),
    configToken: col.textOrNull("config_token"),
    configScheme: col.textOrNull("config_scheme"),
    configCredentials: col.textOrNull("config_credentials"),
    updateBody: col.bytesOrNull("update_body"),
    taskLive: col.boolean("task_live"),
  },
});

/**
 * When the workers should look next: the earliest retry or lease end still to come. (Deliveries
 * already due but not taken wait behind an earlier one of their config; its end pokes the
 * workers, so time alone never makes them takeable.)
 */
export const nextDeliveryDue = statement<[]>()({
  name: "a2a.next_delivery_due",
  text: `select least(
           (select min(next_attempt_at) from a2a_push_deliveries
             where state = 'pending' and next_attempt_at > clock_timestamp()),
           (select min(lease_expires_at) from a2a_push_deliveries
             where state = 'sending' and lease_expires_at > clock_timestamp())) as due`,
  row: { due: col.timestampOrNull("due") },
});

/**
 * What finishing a delivery does to its config's queue: the earliest waiting delivery (next
 * attempt null) after it becomes due now. Run after lockConfig, in a statement of its own.
 */
const promoteNext = `promoted as (
           update a2a_push_deliveries n set next_attempt_at = now()
           from done
           where n.tenant_id = done.tenant_id and n.task_id = done.task_id and n.config_id = done.config_id
             and n.state = 'pending' and n.next_attempt_at is null
             and n.seq = (select min(w.seq) from a2a_push_deliveries w
                          where w.tenant_id = done.tenant_id and w.task_id = done.task_id
                            and w.config_id = done.config_id and w.state = 'pending' and w.next_attempt_at is null)
         )`;

/** Records a 2xx answer, if the worker still holds the delivery, and lets the next one go. */
export const deliveredDelivery = statement<[tenant: string, id: string, workerId: string, status: number]>()({
  name: "a2a.delivered_delivery",
  text: `with done as (
           update a2a_push_deliveries set state = 'delivered', delivered_at = now(), last_status_code = $4,
             last_error = null, worker_id = null, lease_expires_at = null, updated_at = now()
           where tenant_id = $1 and id = $2 and worker_id = $3 and state = 'sending'
           returning *
         ),
         ${promoteNext}
         select * from done`,
  row: delivery,
});

/**
 * Records a failed attempt, if the worker still holds the delivery: DEAD when it is permanent
 * ($6) or the attempts ran out (and the config's next delivery goes), else PENDING after $7 ms
 * when given (Retry-After), else after the backoff min($9, $8 * 2^(attempts-1)), less up to half
 * at random (the later ones keep waiting for it).
 */
export const failedDelivery = statement<
  [
    tenant: string,
    id: string,
    workerId: string,
    error: string,
    status: number | null,
    permanent: boolean,
    retryDelayMs: number | null,
    backoffInitialMs: number,
    backoffMaxMs: number,
  ]
>()({
  name: "a2a.failed_delivery",
  text: `with failed as (
           update a2a_push_deliveries set
             state = case when $6::boolean or attempts >= max_attempts then 'dead' else 'pending' end,
             next_attempt_at = case when $6::boolean or attempts >= max_attempts then next_attempt_at
               else clock_timestamp() + make_interval(secs => coalesce($7::float8,
                 least($9::float8, $8 * power(2::float8, least(attempts - 1, 40))) * (1 - random() / 2)) / 1000.0) end,
             last_error = $4, last_status_code = $5, worker_id = null, lease_expires_at = null, updated_at = now()
           where tenant_id = $1 and id = $2 and worker_id = $3 and state = 'sending'
           returning *
         ),
         done as (select * from failed where state = 'dead'),
         ${promoteNext}
         select * from failed`,
  row: delivery,
});

/** DEAD deliveries of a config PENDING again, due now: the named ones ($4), else up to $5 oldest. */
export const redriveDeliveries = statement<
  [tenant: string, taskId: string, configId: string, idsJson: string | null, limit: number]
>()({
  name: "a2a.redrive_deliveries",
  text: `with dead as (
           select id from a2a_push_deliveries
           where tenant_id = $1 and task_id = $2 and config_id = $3 and state = 'dead'
             and ($4::jsonb is null or id in (select (jsonb_array_elements_text($4::jsonb))::uuid))
           order by seq limit $5
           for update
         )
         update a2a_push_deliveries d set state = 'pending', attempts = 0, next_attempt_at = now(), updated_at = now()
         from dead where d.tenant_id = $1 and d.id = dead.id
         returning d.*`,
  row: delivery,
});

/** Deletes up to $2 DELIVERED deliveries delivered before $1 (the retention), across tenants. */
export const sweepDelivered = statement<[before: Date, limit: number]>()({
  name: "a2a.sweep_delivered",
  text: `delete from a2a_push_deliveries d using (
           select tenant_id, id from a2a_push_deliveries
           where state = 'delivered' and delivered_at < $1::timestamptz
           order by delivered_at limit $2
           for update skip locked
         ) old
         where d.tenant_id = old.tenant_id and d.id = old.id
         returning d.tenant_id`,
  row: { tenantId: col.text("tenant_id") },
});
