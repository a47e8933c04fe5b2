import type { StreamSource } from "../../feed/stream-hub.ts";
import { type EventStore, RUN_EVENTS_CHANNEL, type StoredEvent, TERMINAL_EVENT_TYPE } from "./events.ts";

/** A stream's database reads (topic refreshes and catch-up pages) hold about this much payload. */
const STREAM_READ_BYTES = 2 * 1024 * 1024;
/** Per-entry overhead beside the payload, for the hub's memory bound. */
const ENTRY_OVERHEAD_BYTES = 128;

/** The run event log as the stream hub reads it: one run is one gapless stream, keyed by run id. */
export function runEventSource<T>(events: EventStore, toValue: (event: StoredEvent) => T): StreamSource<T> {
  return {
    channel: RUN_EVENTS_CHANNEL,
    head: (tenant, runId) => events.lastSeq(tenant, runId),
    async read(tenant, runId, afterSeq, limit) {
      const page = await events.read(tenant, runId, afterSeq, { limit, maxBytes: STREAM_READ_BYTES });
      return {
        entries: page.events.map((event) => ({
          seq: event.seq,
          terminal: event.type === TERMINAL_EVENT_TYPE,
          bytes: event.payloadBytes + ENTRY_OVERHEAD_BYTES,
          value: toValue(event),
        })),
        through: page.events.at(-1)?.seq ?? afterSeq,
        more: page.more,
      };
    },
  };
}
