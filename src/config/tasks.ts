import { parseSecretKeys, type SecretKey } from "../core/secrets.ts";
import { bool, type GroupValues, nonNegativeInt, optionalText, positiveInt, setting } from "./settings.ts";

/** TaskService: A2A tasks in cache mode, and conversations. */
export const tasksSettings = {
  taskTtlMs: setting({
    env: "AGENTSTORE_TASK_TTL_MS",
    flag: "task-ttl-ms",
    help: "default TTL of an A2A task saved without one (cache mode); 0 keeps tasks until deleted",
    schema: nonNegativeInt,
    fallback: "0",
  }),
  taskSweepMs: setting({
    env: "AGENTSTORE_TASK_SWEEP_MS",
    flag: "task-sweep-ms",
    help: "how often each replica deletes expired A2A tasks and idle conversations (they are invisible at once)",
    schema: positiveInt,
    fallback: "1000",
  }),
  maxTaskBytes: setting({
    env: "AGENTSTORE_MAX_TASK_BYTES",
    flag: "max-task-bytes",
    help: "largest A2A task (status, artifacts, history, metadata) a write may leave behind",
    schema: positiveInt,
    fallback: String(2 * 1024 * 1024),
  }),
  conversationMaxMessages: setting({
    env: "AGENTSTORE_CONVERSATION_MAX_MESSAGES",
    flag: "conversation-max-messages",
    help: "messages a conversation keeps (the oldest are dropped); 0 keeps all",
    schema: nonNegativeInt,
    fallback: "1000",
  }),
  conversationTtlMs: setting({
    env: "AGENTSTORE_CONVERSATION_TTL_MS",
    flag: "conversation-ttl-ms",
    help: "a conversation not read or written for this long is gone; 0 keeps conversations until deleted",
    schema: nonNegativeInt,
    fallback: "0",
  }),
  pushConfigKeys: setting({
    env: "AGENTSTORE_PUSH_CONFIG_KEYS",
    flag: "push-config-keys",
    help: "comma-separated keyId:base64-32-byte keys that encrypt push-config tokens and credentials; the last encrypts, all decrypt",
    schema: optionalText,
    secret: true,
  }),
  pushAllowPrivateUrls: setting({
    env: "AGENTSTORE_PUSH_ALLOW_PRIVATE_URLS",
    flag: "push-allow-private-urls",
    help: "accept push URLs on loopback, private and link-local addresses (tests, development only)",
    schema: bool,
    fallback: "false",
  }),
  pushDelivery: setting({
    env: "AGENTSTORE_PUSH_DELIVERY",
    flag: "push-delivery",
    help: "send every A2A task update to the task's push configs, durably (a delivery row in the update's transaction, retried until delivered or dead)",
    schema: bool,
    fallback: "false",
  }),
  pushMaxAttempts: setting({
    env: "AGENTSTORE_PUSH_MAX_ATTEMPTS",
    flag: "push-max-attempts",
    help: "attempts a push delivery takes before it is dead",
    schema: positiveInt,
    fallback: "10",
  }),
  pushTimeoutMs: setting({
    env: "AGENTSTORE_PUSH_TIMEOUT_MS",
    flag: "push-timeout-ms",
    help: "how long one push POST (lookup, connect, send, answer) may take",
    schema: positiveInt,
    fallback: "10000",
  }),
  pushBackoffInitialMs: setting({
    env: "AGENTSTORE_PUSH_BACKOFF_INITIAL_MS",
    flag: "push-backoff-initial-ms",
    help: "delay before a failed push delivery's first retry; it doubles at each further one",
    schema: positiveInt,
    fallback: "1000",
  }),
  pushBackoffMaxMs: setting({
    env: "AGENTSTORE_PUSH_BACKOFF_MAX_MS",
    flag: "push-backoff-max-ms",
    help: "longest delay between push delivery attempts (also caps a receiver's Retry-After)",
    schema: positiveInt,
    fallback: "300000",
  }),
  pushDeliveredRetentionMs: setting({
    env: "AGENTSTORE_PUSH_DELIVERED_RETENTION_MS",
    flag: "push-delivered-retention-ms",
    help: "how long a DELIVERED push delivery stays in its config's history; 0 keeps it until its config or task goes",
    schema: nonNegativeInt,
    fallback: String(7 * 24 * 3600 * 1000),
  }),
  pushConcurrency: setting({
    env: "AGENTSTORE_PUSH_CONCURRENCY",
    flag: "push-concurrency",
    help: "push POSTs each replica has in flight at once",
    schema: positiveInt,
    fallback: "16",
  }),
};

export interface PushDeliveryConfig {
  maxAttempts: number;
  timeoutMs: number;
  backoffInitialMs: number;
  backoffMaxMs: number;
  concurrency: number;
  /** null: DELIVERED rows stay until their config or task goes. */
  deliveredRetentionMs: number | null;
}

export interface TasksConfig {
  /** null: tasks saved without a TTL never expire. */
  defaultTtlMs: number | null;
  sweepMs: number;
  maxTaskBytes: number;
  /** null: no maximum. */
  conversationMaxMessages: number | null;
  /** null: conversations never expire. */
  conversationTtlMs: number | null;
  /** Push-config secret keys, oldest first (the last encrypts); empty: stored plain. */
  pushConfigKeys: SecretKey[];
  pushAllowPrivateUrls: boolean;
  /** null: push delivery is off (configs are only stored). */
  pushDelivery: PushDeliveryConfig | null;
}

const zeroIsNone = (n: number) => (n === 0 ? null : n);

export function tasksConfig(values: GroupValues<typeof tasksSettings>, problems: string[]): TasksConfig {
  return {
    defaultTtlMs: zeroIsNone(values.taskTtlMs),
    sweepMs: values.taskSweepMs,
    maxTaskBytes: values.maxTaskBytes,
    conversationMaxMessages: zeroIsNone(values.conversationMaxMessages),
    conversationTtlMs: zeroIsNone(values.conversationTtlMs),
    pushConfigKeys: parseSecretKeys(
      values.pushConfigKeys,
      problems,
      "AGENTSTORE_PUSH_CONFIG_KEYS / --push-config-keys",
    ),
    pushAllowPrivateUrls: values.pushAllowPrivateUrls,
    pushDelivery: values.pushDelivery
      ? {
          maxAttempts: values.pushMaxAttempts,
          timeoutMs: values.pushTimeoutMs,
          backoffInitialMs: values.pushBackoffInitialMs,
          backoffMaxMs: Math.max(values.pushBackoffMaxMs, values.pushBackoffInitialMs),
          concurrency: values.pushConcurrency,
          deliveredRetentionMs: zeroIsNone(values.pushDeliveredRetentionMs),
        }
      : null,
  };
}
