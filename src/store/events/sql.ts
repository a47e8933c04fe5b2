import { col } from "../../db/rows.ts";
import { statement } from "../../db/sql.ts";

/**
 * The event log's hot statements. They are SQL rather than ORM calls because they are the write
 * and stream paths (one round trip each, planned once) and lean on PostgreSQL features the ORM
 * does not express: data-modifying CTEs, jsonb_array_elements, window functions.
 */

/**
 * Appends a batch in one statement: the UPDATE locks the run's row and reserves the seqs
 * (last_seq + n), the INSERT writes the events with them. Appends to a run thereby serialize in
 * commit order on the row lock, so seq N+1 is never visible before seq N, and an append that fails
 * leaves no gap. A run that is terminal or missing updates nothing and so inserts nothing (no row
 * returned), as does a run whose holder is not $5 when $5 (the call's fence) is set. PostgreSQL runs
 * a data-modifying CTE whether or not the final SELECT reads it. $4 is a JSON array of
 * {"type", "payload"} objects.
 */
export const appendEvents = statement<
  [count: number, tenant: string, runId: string, batchJson: string, runnerId: string | null]
>()({
  name: "events.append",
  text: `with bumped as (
           update runs set last_seq = last_seq + $1, updated_at = clock_timestamp()
           where tenant_id = $2 and id = $3 and status in ('pending', 'claimed', 'running')
             and ($5::text is null or runner_id = $5)
           returning last_seq, updated_at
         ), inserted as (
           insert into run_events (tenant_id, run_id, seq, type, payload, created_at)
           select $2, $3, b.last_seq - $1 + e.ord, e.value->>'type', e.value->'payload', b.updated_at
           from bumped b cross join lateral jsonb_array_elements($4::jsonb) with ordinality as e(value, ord)
         )
         select last_seq, updated_at from bumped`,
  row: { lastSeq: col.safeInt("last_seq"), createdAt: col.timestamp("updated_at") },
});

/** The terminal event, at the seq the run's terminating UPDATE reserved. */
export const insertTerminalEvent = statement<
  [tenant: string, runId: string, seq: number, payloadJson: string, createdAt: Date]
>()({
  name: "events.insert_terminal",
  text: `insert into run_events (tenant_id, run_id, seq, type, payload, created_at)
         values ($1, $2, $3, 'terminal_status', $4::jsonb, $5)`,
  row: {},
});

/** Records an idempotent append's seqs; no row back means a concurrent retry recorded it first. */
export const recordBatch = statement<
  [tenant: string, runId: string, requestId: string, requestHash: string, firstSeq: number, lastSeq: number]
>()({
  name: "events.record_batch",
  text: `insert into run_event_batches (tenant_id, run_id, request_id, request_hash, first_seq, last_seq)
         values ($1, $2, $3, $4, $5, $6) on conflict do nothing returning 1 as recorded`,
  row: { recorded: col.safeInt("recorded") },
});

/**
 * A page of events after a seq, optionally of some types only ($4, empty for all). The innermost
 * query takes the next limit + 1 rows by the primary key (one more than the page, to know whether
 * more exist); the outer ones keep the first `limit` rows whose preceding payloads fit in maxBytes
 * (the first row always does), so a page stays near maxBytes however large single events are.
 * Payloads come back as text: their size is the byte budget, and they are parsed once, here.
 */
export const readEvents = statement<
  [
    tenant: string,
    runId: string,
    afterSeq: number,
    types: string[],
    fetch: number,
    maxBytes: number,
    limit: number,
  ]
>()({
  name: "events.read",
  text: `select seq, type, payload, bytes, created_at, available from (
           select *,
             sum(bytes) over (order by seq) - bytes as bytes_before,
             row_number() over (order by seq) as n,
             count(*) over () as available
           from (
             select seq, type, payload::text as payload, octet_length(payload::text) as bytes, created_at
             from run_events
             where tenant_id = $1 and run_id = $2 and seq > $3
               and (cardinality($4::text[]) = 0 or type = any($4::text[]))
             order by seq limit $5
           ) next_rows
         ) sized
         where bytes_before < $6 and n <= $7
         order by seq`,
  row: {
    seq: col.safeInt("seq"),
    type: col.text("type"),
    payload: col.jsonText("payload"),
    bytes: col.safeInt("bytes"),
    createdAt: col.timestamp("created_at"),
    available: col.safeInt("available"),
  },
});

export const lastSeq = statement<[tenant: string, runId: string]>()({
  name: "events.last_seq",
  text: "select last_seq from runs where tenant_id = $1 and id = $2",
  row: { lastSeq: col.safeInt("last_seq") },
});

type AppendGroupParams = [callsJson: string, notifyChannel: string | null];

/**
 * Many appends, to any runs, in one autocommitted statement: the hot path of AppendRunEvents under
 * load, one round trip and one commit for a whole group of calls (store/events/appends.ts).
 *
 * $1 is a JSON array with one object per call: {"t": tenant, "r": run id, "n": event count, "b": the
 * events [{"type", "payload"}], "q": request id or null, "h": request hash or null, "w": the
 * runner the call is fenced to, or null}; `ord` is the call's position. (One JSON text, rather than
 * parallel text arrays, spares pg quoting every character of every payload into an array literal.)
 *
 * A call whose request id was recorded before returns that record (`existing`). The other calls'
 * runs are locked in (tenant_id, id) order, skipping runs another transaction holds right now
 * (SKIP LOCKED), so this statement never waits for a lock and so never takes part in a deadlock;
 * the calls of a skipped run come back `busy` and go through the ordinary transaction, which waits.
 * Calls fenced to a runner that does not hold their run come back `not_holder`. The others reserve
 * their seqs from their run's last_seq, as one append does, calls to one run in `ord` order; their
 * events go in with those seqs, idempotent calls record their batch, and the feed hears of every run
 * that grew, in NOTIFYs of at most 40 runs each (a payload must stay under 8000 bytes), sent by
 * PostgreSQL at commit; $2 is the channel, or null where the feed is in-process (PGlite). Calls of
 * a missing or terminal run come back `missing` or `terminal`.
 */
export const appendGroup = statement<AppendGroupParams>()({
  name: "events.append_group",
  text: `with input as (
           select c.value->>'t' as tenant_id, (c.value->>'r')::uuid as run_id, (c.value->>'n')::int8 as n,
             c.value->'b' as batch, c.value->>'q' as request_id, c.value->>'h' as request_hash,
             c.value->>'w' as runner_id, c.ord
           from jsonb_array_elements($1::jsonb) with ordinality as c(value, ord)
         ), existing as (
           select i.ord, b.first_seq, b.last_seq, b.request_hash, b.created_at
           from input i join run_event_batches b
             on b.tenant_id = i.tenant_id and b.run_id = i.run_id and b.request_id = i.request_id
         ), todo as (
           select i.* from input i where not exists (select 1 from existing e where e.ord = i.ord)
         ), locked as materialized (
           select r.tenant_id, r.id, r.runner_id from runs r
           where (r.tenant_id, r.id) in (select tenant_id, run_id from todo)
             and r.status in ('pending', 'claimed', 'running')
           order by r.tenant_id, r.id
           for update skip locked
         ), valid as (
           select t.* from todo t join locked l on l.tenant_id = t.tenant_id and l.id = t.run_id
           where t.runner_id is null or l.runner_id = t.runner_id
         ), per_run as (
           select tenant_id, run_id, sum(n)::int8 as total from valid group by tenant_id, run_id
         ), bumped as (
           update runs r set last_seq = r.last_seq + p.total, updated_at = clock_timestamp()
           from per_run p
           where r.tenant_id = p.tenant_id and r.id = p.run_id
           returning r.tenant_id, r.id, r.last_seq - p.total as base, r.last_seq, r.updated_at
         ), placed as (
           select v.ord, v.tenant_id, v.run_id, v.n, v.batch, v.request_id, v.request_hash, b.updated_at,
             b.base + (sum(v.n) over (partition by v.tenant_id, v.run_id order by v.ord))::int8 - v.n as before_seq
           from valid v join bumped b on b.tenant_id = v.tenant_id and b.id = v.run_id
         ), inserted as (
           insert into run_events (tenant_id, run_id, seq, type, payload, created_at)
           select p.tenant_id, p.run_id, p.before_seq + e.ord, e.value->>'type', e.value->'payload', p.updated_at
           from placed p cross join lateral jsonb_array_elements(p.batch) with ordinality as e(value, ord)
         ), recorded as (
           insert into run_event_batches (tenant_id, run_id, request_id, request_hash, first_seq, last_seq, created_at)
           select tenant_id, run_id, request_id, request_hash, before_seq + 1, before_seq + n, updated_at
           from placed where request_id is not null
         ), notified as (
           select pg_notify($2, json_agg(json_build_array('run_events', c.tenant_id, c.id, c.last_seq))::text)
           from (select b.*, (row_number() over () - 1) / 40 as chunk from bumped b) c
           where $2::text is not null
           group by c.chunk
         ), refused as (
           select t.ord,
             case when l.id is not null then 'not_holder'
                  when r.id is null then 'missing'
                  when r.status in ('pending', 'claimed', 'running') then 'busy'
                  else 'terminal' end as outcome,
             coalesce(l.runner_id, r.runner_id) as holder, r.status
           from todo t
           left join locked l on l.tenant_id = t.tenant_id and l.id = t.run_id
           left join runs r on r.tenant_id = t.tenant_id and r.id = t.run_id
           where not exists (select 1 from valid v where v.ord = t.ord)
         )
         select 'placed' as outcome, ord, before_seq + 1 as first_seq, before_seq + n as last_seq,
           updated_at as created_at, request_hash, null::text as holder, null::text as status
         from placed
         union all
         select 'existing', ord, first_seq, last_seq, created_at, request_hash, null, null from existing
         union all
         select outcome, ord, null, null, null, null, holder, status from refused
         union all
         select 'notified', count(*), null, null, null, null, null, null from notified`,
  row: {
    outcome: col.text("outcome"),
    ord: col.safeInt("ord"),
    firstSeq: col.safeIntOrNull("first_seq"),
    lastSeq: col.safeIntOrNull("last_seq"),
    createdAt: col.timestampOrNull("created_at"),
    requestHash: col.textOrNull("request_hash"),
    holder: col.textOrNull("holder"),
    status: col.textOrNull("status"),
  },
});

/**
 * One event the server itself writes into a run's log (a claim, a release, a command, ...), at
 * the run's next seq under its row lock. The caller holds the run active in the same transaction.
 */
export const appendServerEvent = statement<
  [tenant: string, runId: string, type: string, payloadJson: string]
>()({
  name: "events.append_server",
  text: `with bumped as (
           update runs set last_seq = last_seq + 1, updated_at = clock_timestamp()
           where tenant_id = $1 and id = $2
           returning last_seq, updated_at
         )
         insert into run_events (tenant_id, run_id, seq, type, payload, created_at)
         select $1, $2, last_seq, $3, $4::jsonb, updated_at from bumped
         returning seq, created_at`,
  row: { seq: col.safeInt("seq"), createdAt: col.timestamp("created_at") },
});

/** The seq of the latest claim of the run by a runner: the start of its current tenure, if any. */
export const latestClaimBy = statement<[tenant: string, runId: string, runnerId: string]>()({
  name: "events.latest_claim_by",
  text: `select max(seq) as seq from run_events
         where tenant_id = $1 and run_id = $2 and type = 'agentstore.claim' and payload->>'runner_id' = $3`,
  row: { seq: col.safeIntOrNull("seq") },
});
