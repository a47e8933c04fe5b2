/**
 * Typed TypeScript client for agentstore.
 *
 *   const store = createClient({ baseUrl: "http://127.0.0.1:50051", apiKey });
 *   const { run } = await store.runs.createRun({ run: { threadId: "t-1" } });
 *   for await (const event of store.followRunEvents(run.runId)) console.log(event.seq, event.type);
 *   store.close();
 */
import {
  type Client,
  Code,
  ConnectError,
  createClient as createConnectClient,
  type Interceptor,
} from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { QueueService } from "../../gen/agentstore/v1/queue_service_pb.ts";
import type { RunEvent } from "../../gen/agentstore/v1/run_event_pb.ts";
import { RunStatus } from "../../gen/agentstore/v1/run_pb.ts";
import { RunService } from "../../gen/agentstore/v1/run_service_pb.ts";
import { RunnerService } from "../../gen/agentstore/v1/runner_service_pb.ts";
import { SessionService } from "../../gen/agentstore/v1/session_service_pb.ts";
import { TaskService } from "../../gen/agentstore/v1/task_service_pb.ts";

export * from "../../gen/agentstore/v1/a2a_task_pb.ts";
export * from "../../gen/agentstore/v1/command_pb.ts";
export * from "../../gen/agentstore/v1/queue_service_pb.ts";
export * from "../../gen/agentstore/v1/queue_task_pb.ts";
export * from "../../gen/agentstore/v1/run_event_pb.ts";
export * from "../../gen/agentstore/v1/run_pb.ts";
export * from "../../gen/agentstore/v1/run_service_pb.ts";
export * from "../../gen/agentstore/v1/runner_pb.ts";
export * from "../../gen/agentstore/v1/runner_service_pb.ts";
export * from "../../gen/agentstore/v1/session_pb.ts";
export * from "../../gen/agentstore/v1/session_service_pb.ts";
export * from "../../gen/agentstore/v1/task_service_pb.ts";
export { Code, ConnectError };

export interface ClientOptions {
  /** Server address, e.g. "http://127.0.0.1:50051" or "https://agentstore.internal". */
  baseUrl: string;
  /** API key; sent as "authorization: Bearer <key>". */
  apiKey?: string;
  /** "grpc" (HTTP/2, the default) or "connect" (HTTP/1.1 or 2, JSON-friendly proxies). */
  protocol?: "grpc" | "connect";
  /** Extra interceptors, run after the one that adds the API key. */
  interceptors?: Interceptor[];
  /** HTTP/2 keepalive: a PING after this much silence on a stream; a dead server is noticed within it. */
  pingIntervalMs?: number;
  /** For https:// servers: a private CA to trust, and a client certificate for mutual TLS. */
  tls?: { ca?: string | Buffer; cert?: string | Buffer; key?: string | Buffer };
}

export interface FollowOptions {
  /** Start after this seq (0, the default, means the whole log). */
  afterSeq?: bigint | number;
  /** Only these event types (the terminal event always comes). */
  types?: string[];
  /** Stops following; the iterator then throws the signal's reason. */
  signal?: AbortSignal;
  /** Give up after this many consecutive failed reconnects (default: never). */
  maxReconnects?: number;
  /** First reconnect delay; doubles per failure with full jitter (default 100 ms). */
  initialDelayMs?: number;
  /** Longest reconnect delay (default 5 s). */
  maxDelayMs?: number;
  /** Called before each reconnect, e.g. for logging. */
  onReconnect?: (info: { error: ConnectError; attempt: number; delayMs: number; afterSeq: bigint }) => void;
}

export interface AgentStoreClient {
  /** Every RunService RPC, typed: runs, events, claims and leases, commands. */
  readonly runs: Client<typeof RunService>;
  /** Every RunnerService RPC, typed: registration, heartbeats, runner jobs. */
  readonly runners: Client<typeof RunnerService>;
  /** Every SessionService RPC, typed: sessions, read state, WatchSessions, bindings, claims, interrupts. */
  readonly sessions: Client<typeof SessionService>;
  /** Every QueueService RPC, typed: enqueue, claim, renew, complete, fail, dead tasks, schedules, WatchTasks. */
  readonly queue: Client<typeof QueueService>;
  /** Every TaskService RPC, typed: A2A tasks, their update streams, long polls, conversations. */
  readonly tasks: Client<typeof TaskService>;
  /**
   * Follows a run's events from `afterSeq` to its terminal event. When the connection drops or the
   * server restarts it reconnects by itself and resumes after the last seq it yielded, so the
   * caller sees every event once, in order, with no gap.
   */
  followRunEvents(runId: string, options?: FollowOptions): AsyncGenerator<RunEvent, void, undefined>;
  /** Closes the connection. */
  close(): void;
}

const TERMINAL_EVENT_TYPE = "terminal_status";
const TERMINAL_STATUSES = new Set<RunStatus>([
  RunStatus.COMPLETED,
  RunStatus.FAILED,
  RunStatus.BLOCKED,
  RunStatus.CANCELLED,
]);

/**
 * Worth a reconnect: the server went away (UNAVAILABLE, also sent on graceful shutdown), the
 * connection broke mid-stream (CANCELED/UNKNOWN/INTERNAL from a reset HTTP/2 stream) or a
 * transient conflict (ABORTED). Everything else is the caller's problem and is thrown.
 */
const RETRYABLE = new Set([
  Code.Unavailable,
  Code.Canceled,
  Code.Unknown,
  Code.Internal,
  Code.Aborted,
  Code.DeadlineExceeded,
]);

/** INTERNAL or UNKNOWN this many times in a row without progress ends the follow with the error. */
const SERVER_FAULTS = new Set([Code.Internal, Code.Unknown]);
const MAX_SERVER_FAULTS = 5;

/**
 * HTTP/2 flow-control windows of the client's connection. Node's default is 64 KiB for the whole
 * connection, shared by every stream on it: with hundreds of streams on one connection (one per
 * followed run), the server could send only a few hundred bytes per stream before waiting for the
 * client to acknowledge, and streams opened last fell seconds behind. 16 MiB for the connection
 * and 4 MiB per stream let the server keep sending while the client reads.
 */
const CONNECTION_WINDOW_BYTES = 16 * 1024 * 1024;
const STREAM_WINDOW_BYTES = 4 * 1024 * 1024;

/** Http2SessionManager that widens the connection window of every session it opens. */
class WideWindowSessionManager extends Http2SessionManager {
  readonly #widened = new WeakSet<object>();

  override async request(...args: Parameters<Http2SessionManager["request"]>) {
    const stream = await super.request(...args);
    const session = stream.session;
    if (session !== undefined && !this.#widened.has(session)) {
      this.#widened.add(session);
      session.setLocalWindowSize(CONNECTION_WINDOW_BYTES);
    }
    return stream;
  }
}

export function createClient(options: ClientOptions): AgentStoreClient {
  const auth: Interceptor = (next) => (req) => {
    if (options.apiKey !== undefined) req.header.set("authorization", `Bearer ${options.apiKey}`);
    return next(req);
  };
  const interceptors = [auth, ...(options.interceptors ?? [])];
  const tls = options.tls ?? {};
  const sessionManager =
    options.protocol === "connect"
      ? undefined
      : new WideWindowSessionManager(
          options.baseUrl,
          { pingIntervalMs: options.pingIntervalMs ?? 15_000 },
          { ...tls, settings: { initialWindowSize: STREAM_WINDOW_BYTES } },
        );
  const transport =
    sessionManager === undefined
      ? createConnectTransport({
          baseUrl: options.baseUrl,
          httpVersion: "1.1",
          interceptors,
          nodeOptions: tls,
        })
      : createGrpcTransport({ baseUrl: options.baseUrl, interceptors, sessionManager });
  const runs = createConnectClient(RunService, transport);
  const runners = createConnectClient(RunnerService, transport);
  const sessions = createConnectClient(SessionService, transport);
  const queue = createConnectClient(QueueService, transport);
  const tasks = createConnectClient(TaskService, transport);

  async function* followRunEvents(runId: string, follow: FollowOptions = {}) {
    const { signal, types = [], maxReconnects = Number.POSITIVE_INFINITY } = follow;
    const initialDelayMs = follow.initialDelayMs ?? 100;
    const maxDelayMs = follow.maxDelayMs ?? 5_000;
    let last = BigInt(follow.afterSeq ?? 0);
    let failures = 0;
    let faults = 0;
    for (;;) {
      signal?.throwIfAborted();
      try {
        for await (const { event } of runs.streamRunEvents({ runId, afterSeq: last, types }, { signal })) {
          // Seqs only grow within one stream; the check guards the resume arithmetic, not the server.
          if (event === undefined || event.seq <= last) continue;
          last = event.seq;
          failures = 0;
          faults = 0;
          yield event;
          if (event.type === TERMINAL_EVENT_TYPE) return;
        }
        // A stream ends cleanly only after the terminal event, or at once when the run is terminal
        // and nothing is left after `last`; anything else (a proxy cutting it) is resumed.
        const { run } = await runs.getRun({ runId }, { signal });
        if (run !== undefined && TERMINAL_STATUSES.has(run.status) && last >= run.lastEventSeq) return;
        throw new ConnectError("the stream ended before the run's terminal event", Code.Unavailable);
      } catch (err) {
        if (signal?.aborted) throw signal.reason;
        const error = ConnectError.from(err);
        if (!RETRYABLE.has(error.code) || failures >= maxReconnects) throw error;
        // A server fault that persists is a bug to surface, not an outage to wait out.
        if (SERVER_FAULTS.has(error.code) && ++faults > MAX_SERVER_FAULTS) throw error;
        const delayMs = Math.round(Math.random() * Math.min(maxDelayMs, initialDelayMs * 2 ** failures));
        failures++;
        follow.onReconnect?.({ error, attempt: failures, delayMs, afterSeq: last });
        await sleep(delayMs, signal);
      }
    }
  }

  return {
    runs,
    runners,
    sessions,
    queue,
    tasks,
    followRunEvents,
    close: () => sessionManager?.abort(),
  };
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(done, ms);
    function done() {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }
    function onAbort() {
      clearTimeout(timer);
      reject(signal?.reason);
    }
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
