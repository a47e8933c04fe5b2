import { create } from "@bufbuild/protobuf";
import { Code, type ServiceImpl } from "@connectrpc/connect";
import {
  type Health,
  HealthCheckResponseSchema,
  HealthListResponseSchema,
  HealthCheckResponse_ServingStatus as ServingStatus,
} from "../../gen/grpc/health/v1/health_pb.ts";
import type { Logger } from "../core/logger.ts";
import type { Database } from "../db/database.ts";
import { connectError } from "./errors.ts";

/**
 * Probes the database on a timer. The service is SERVING while the last probe succeeded, and
 * NOT_SERVING while the database is unreachable or the server is shutting down; it comes back to
 * SERVING by itself at the first probe that succeeds again.
 */
export class DatabaseHealth {
  readonly #db: Database;
  readonly #intervalMs: number;
  readonly #logger: Logger;
  readonly #listeners = new Set<() => void>();
  #serving = false;
  #shuttingDown = false;
  #timer: NodeJS.Timeout | undefined;
  #probing: Promise<void> | undefined;

  constructor(db: Database, intervalMs: number, logger: Logger) {
    this.#db = db;
    this.#intervalMs = intervalMs;
    this.#logger = logger;
  }

  get serving(): boolean {
    return this.#serving && !this.#shuttingDown;
  }

  async start(): Promise<void> {
    await this.probe();
    this.#timer = setInterval(() => void this.probe(), this.#intervalMs);
    this.#timer.unref();
  }

  /** Runs one probe (concurrent callers share it). */
  probe(): Promise<void> {
    this.#probing ??= this.#probeOnce().finally(() => {
      this.#probing = undefined;
    });
    return this.#probing;
  }

  async #probeOnce(): Promise<void> {
    let timeout: NodeJS.Timeout | undefined;
    const limit = Math.max(1_000, this.#intervalMs * 2);
    try {
      await Promise.race([
        this.#db.orm.em.fork().execute("select 1"),
        new Promise((_, reject) => {
          timeout = setTimeout(() => reject(new Error(`no answer within ${limit} ms`)), limit);
        }),
      ]);
      this.#set(true);
    } catch (err) {
      if (this.#serving)
        this.#logger.warn({ err: (err as Error).message }, "database unreachable: NOT_SERVING");
      this.#set(false);
    } finally {
      clearTimeout(timeout);
    }
  }

  /** Reports NOT_SERVING from now on, so that load balancers drain this replica. */
  shutdown(): void {
    this.#shuttingDown = true;
    clearInterval(this.#timer);
    this.#emit();
  }

  onChange(listener: () => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  #set(serving: boolean): void {
    if (serving === this.#serving) return;
    if (serving) this.#logger.info("database reachable: SERVING");
    this.#serving = serving;
    this.#emit();
  }

  #emit(): void {
    for (const listener of this.#listeners) listener();
  }
}

/** grpc.health.v1.Health for "" (the whole server) and each agentstore service. */
export function createHealthService(
  health: DatabaseHealth,
  services: readonly string[],
): ServiceImpl<typeof Health> {
  const known = new Set(["", ...services]);
  const status = () => (health.serving ? ServingStatus.SERVING : ServingStatus.NOT_SERVING);
  return {
    check(req) {
      if (!known.has(req.service)) {
        throw connectError(Code.NotFound, "SERVICE_UNKNOWN", `unknown service '${req.service}'`);
      }
      return create(HealthCheckResponseSchema, { status: status() });
    },
    async *watch(req, ctx) {
      if (!known.has(req.service)) {
        // Per the health protocol, Watch reports SERVICE_UNKNOWN instead of failing.
        yield create(HealthCheckResponseSchema, { status: ServingStatus.SERVICE_UNKNOWN });
        return;
      }
      let wake: (() => void) | undefined;
      const off = health.onChange(() => wake?.());
      const onAbort = () => wake?.();
      ctx.signal.addEventListener("abort", onAbort, { once: true });
      try {
        let last: ServingStatus | undefined;
        for (;;) {
          // Ends with the abort reason: UNAVAILABLE at shutdown, so watchers move to another replica.
          ctx.signal.throwIfAborted();
          const current = status();
          if (current !== last) {
            last = current;
            yield create(HealthCheckResponseSchema, { status: current });
          }
          await new Promise<void>((resolve) => {
            wake = resolve;
            // A change that landed while the last status was being sent woke nobody: check again.
            if (ctx.signal.aborted || status() !== last) resolve();
          });
        }
      } finally {
        off();
        ctx.signal.removeEventListener("abort", onAbort);
      }
    },
    list() {
      return create(HealthListResponseSchema, {
        statuses: Object.fromEntries(
          [...known].map((name) => [name, create(HealthCheckResponseSchema, { status: status() })]),
        ),
      });
    },
  };
}
