import { Code, ConnectError } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { RunEvent } from "../gen/agentstore/v1/run_event_pb.ts";
import { RunService } from "../gen/agentstore/v1/run_service_pb.ts";
import { file_google_rpc_error_details } from "../gen/google/rpc/error_details_pb.ts";
import { Health } from "../gen/grpc/health/v1/health_pb.ts";
import type { Config } from "./config.ts";
import { type Database, migrate, openDatabase, pendingMigrations } from "./db/database.ts";
import type { ChangeFeed } from "./feed/feed.ts";
import { LogHub, type LogSource } from "./feed/hub.ts";
import { LocalFeed } from "./feed/local-feed.ts";
import { PgFeed } from "./feed/pg-feed.ts";
import type { Logger } from "./logger.ts";
import { createAuthGate } from "./server/auth.ts";
import { createHealthService, DatabaseHealth } from "./server/health.ts";
import { type HttpServer, listen } from "./server/http.ts";
import { observeInterceptor, validationInterceptor } from "./server/interceptors.ts";
import { createReflectionServices } from "./server/reflection.ts";
import { eventToProto } from "./services/convert.ts";
import { createRunService } from "./services/run-service.ts";
import { createRedactor } from "./store/redact.ts";
import { RUN_EVENTS_CHANNEL, RunStore, TERMINAL_EVENT_TYPE } from "./store/runs.ts";

/** A stream's database reads (topic refreshes and catch-up pages) hold about this much payload. */
const STREAM_READ_BYTES = 2 * 1024 * 1024;

export interface App {
  readonly port: number;
  readonly db: Database;
  readonly health: DatabaseHealth;
  /** The run-event stream hub (its stats() show fan-out and buffering). */
  readonly runEvents: LogHub<RunEvent>;
  /** Graceful stop: NOT_SERVING, no new connections, open streams end with UNAVAILABLE, database closed. */
  close(): Promise<void>;
}

/** Opens the database and the feed, then serves every service; the whole server in one call. */
export async function startApp(config: Config, logger: Logger): Promise<App> {
  const db = await openDatabase(config.database);
  const cleanup: Array<() => Promise<void> | void> = [() => db.close()];
  try {
    if (config.migrateAtStart) {
      const applied = await migrate(db);
      if (applied.length > 0) logger.info({ migrations: applied }, "applied migrations");
    } else {
      const pending = await pendingMigrations(db);
      if (pending.length > 0) {
        throw new Error(
          `the database schema is behind this server (${pending.length} pending migrations: ${pending.join(", ")}); ` +
            "run `agentstore migrate` (npm run migrate) or start with AGENTSTORE_MIGRATE=true",
        );
      }
    }
    const feed: ChangeFeed =
      config.database.kind === "postgres" ? new PgFeed(config.database.url, logger) : new LocalFeed(logger);
    await feed.start();
    cleanup.unshift(() => feed.close());

    const store = new RunStore(db, feed, {
      limits: config.limits,
      redact: createRedactor(config.extraRedactKeys),
    });
    const runEventSource: LogSource<RunEvent> = {
      channel: RUN_EVENTS_CHANNEL,
      head: (tenant, runId) => store.lastSeq(tenant, runId),
      read: async (tenant, runId, afterSeq, limit) =>
        (await store.readEvents(tenant, runId, afterSeq, { limit, maxBytes: STREAM_READ_BYTES })).map(
          (event) => ({
            seq: event.seq,
            terminal: event.type === TERMINAL_EVENT_TYPE,
            bytes: event.payloadBytes + 128,
            value: eventToProto(event),
          }),
        ),
    };
    const runEvents = new LogHub(
      runEventSource,
      feed,
      {
        bufferEntries: config.stream.bufferEvents,
        bufferBytes: 8 * 1024 * 1024,
        pageSize: 500,
        pollIntervalMs: config.stream.pollIntervalMs,
      },
      logger,
    );
    cleanup.unshift(() => runEvents.close());

    const health = new DatabaseHealth(db, config.healthIntervalMs, logger);
    await health.start();
    cleanup.unshift(() => health.shutdown());

    const shutdown = new AbortController();
    // Error details ride in google.protobuf.Any; reflecting their file lets buf curl decode them.
    const reflection = createReflectionServices([RunService, Health], [file_google_rpc_error_details]);
    const handler = connectNodeAdapter({
      routes: (router) => {
        router.service(RunService, createRunService(store, runEvents));
        router.service(Health, createHealthService(health, [RunService.typeName]));
        router.service(...reflection.v1);
        router.service(...reflection.v1alpha);
      },
      requestGate: createAuthGate(config.apiKeys),
      interceptors: [observeInterceptor(logger), validationInterceptor()],
      readMaxBytes: config.limits.maxMessageBytes,
      shutdownSignal: shutdown.signal,
      grpc: true,
      grpcWeb: true,
      connect: true,
    });
    const server: HttpServer = await listen(handler, { ...config.listen, tls: config.tls }, logger);
    logger.info(
      { port: server.port, host: config.listen.host, database: db.kind, tls: config.tls !== undefined },
      "agentstore serving",
    );

    let closing: Promise<void> | undefined;
    return {
      port: server.port,
      db,
      health,
      runEvents,
      close() {
        closing ??= (async () => {
          health.shutdown();
          shutdown.abort(
            new ConnectError("the server is shutting down; reconnect to resume", Code.Unavailable),
          );
          await server.close(config.shutdownGraceMs);
          for (const step of cleanup) await step();
          logger.info("agentstore stopped");
        })();
        return closing;
      },
    };
  } catch (err) {
    for (const step of cleanup) await Promise.resolve(step()).catch(() => {});
    throw err;
  }
}
