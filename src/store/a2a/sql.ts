import { col } from "../../db/rows.ts";
import { statement } from "../../db/sql.ts";
import { A2aConversationEntity, A2aTaskEntity } from "./entities.ts";

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
 * Deletes up to $2 tasks expired at $1 with their update logs and push configs; rows a writer
 * holds wait for the next sweep.
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
