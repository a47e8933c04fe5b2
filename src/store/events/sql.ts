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
 * returned). PostgreSQL runs a data-modifying CTE whether or not the final SELECT reads it.
 * $4 is a JSON array of {"type", "payload"} objects.
 */
export const appendEvents = statement<[count: number, tenant: string, runId: string, batchJson: string]>()({
  name: "events.append",
  text: `with bumped as (
           update runs set last_seq = last_seq + $1, updated_at = clock_timestamp()
           where tenant_id = $2 and id = $3 and status in ('pending', 'claimed', 'running')
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
