import { type GroupValues, nonNegativeInt, optionalText, positiveInt, setting } from "./settings.ts";

/** Limits and stream tuning of RunService (runs and run events). */
export const runsSettings = {
  maxEventBytes: setting({
    env: "AGENTSTORE_MAX_EVENT_BYTES",
    flag: "max-event-bytes",
    help: "largest event payload (JSON bytes)",
    schema: positiveInt,
    fallback: String(256 * 1024),
  }),
  maxBatchEvents: setting({
    env: "AGENTSTORE_MAX_BATCH_EVENTS",
    flag: "max-batch-events",
    help: "most events in one AppendRunEvents",
    schema: positiveInt,
    fallback: "1000",
  }),
  maxBatchBytes: setting({
    env: "AGENTSTORE_MAX_BATCH_BYTES",
    flag: "max-batch-bytes",
    help: "largest AppendRunEvents batch (sum of JSON payload bytes)",
    schema: positiveInt,
    fallback: String(4 * 1024 * 1024),
  }),
  maxRunJsonBytes: setting({
    env: "AGENTSTORE_MAX_RUN_JSON_BYTES",
    flag: "max-run-json-bytes",
    help: "largest run metadata + input (JSON bytes)",
    schema: positiveInt,
    fallback: String(1024 * 1024),
  }),
  streamBufferEvents: setting({
    env: "AGENTSTORE_STREAM_BUFFER_EVENTS",
    flag: "stream-buffer-events",
    help: "recent events kept in memory per streamed run; slower readers catch up from the database",
    schema: positiveInt,
    fallback: "256",
  }),
  streamPollMs: setting({
    env: "AGENTSTORE_STREAM_POLL_MS",
    flag: "stream-poll-ms",
    help: "safety re-check of streamed runs, in case a notification was lost",
    schema: positiveInt,
    fallback: "15000",
  }),
  leaseGraceMs: setting({
    env: "AGENTSTORE_LEASE_GRACE_MS",
    flag: "lease-grace-ms",
    help: "how long after a run's lease expired lease recovery takes it from its silent runner",
    schema: nonNegativeInt,
    fallback: "5000",
  }),
  leaseSweepMs: setting({
    env: "AGENTSTORE_LEASE_SWEEP_MS",
    flag: "lease-sweep-ms",
    help: "how often each replica looks for expired leases (one replica sweeps at a time)",
    schema: positiveInt,
    fallback: "1000",
  }),
  dispatchPollMs: setting({
    env: "AGENTSTORE_DISPATCH_POLL_MS",
    flag: "dispatch-poll-ms",
    help: "safety re-look of a waiting ClaimNextRun, in case a new-run notification was lost",
    schema: positiveInt,
    fallback: "2000",
  }),
  redactKeys: setting({
    env: "AGENTSTORE_REDACT_KEYS",
    flag: "redact-keys",
    help: "extra comma-separated payload key names to redact (on top of the built-in list)",
    schema: optionalText,
  }),
};

export interface RunLimits {
  /** Largest JSON payload of one event, after encoding. */
  maxEventBytes: number;
  /** Most events in one AppendRunEvents. */
  maxBatchEvents: number;
  /** Largest sum of event payloads in one AppendRunEvents. */
  maxBatchBytes: number;
  /** Largest metadata + input of a run, as JSON. */
  maxRunJsonBytes: number;
}

export interface RunsConfig {
  limits: RunLimits;
  stream: { bufferEvents: number; pollIntervalMs: number };
  leases: { graceMs: number; sweepMs: number };
  dispatchPollMs: number;
  extraRedactKeys: string[];
}

export function runsConfig(values: GroupValues<typeof runsSettings>): RunsConfig {
  return {
    limits: {
      maxEventBytes: values.maxEventBytes,
      maxBatchEvents: values.maxBatchEvents,
      maxBatchBytes: values.maxBatchBytes,
      maxRunJsonBytes: values.maxRunJsonBytes,
    },
    stream: { bufferEvents: values.streamBufferEvents, pollIntervalMs: values.streamPollMs },
    leases: { graceMs: values.leaseGraceMs, sweepMs: values.leaseSweepMs },
    dispatchPollMs: values.dispatchPollMs,
    extraRedactKeys: (values.redactKeys ?? "")
      .split(",")
      .map((k) => k.trim())
      .filter(Boolean),
  };
}
