import { setImmediate as yieldToEventLoop } from "node:timers/promises";
import {
  Code,
  ConnectError,
  type ConnectRouter,
  createRouterTransport,
  type Interceptor,
  type Transport,
} from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { file_google_rpc_error_details } from "../gen/google/rpc/error_details_pb.ts";
import { Health } from "../gen/grpc/health/v1/health_pb.ts";
import type { Config } from "./config/index.ts";
import { StartupError } from "./core/errors.ts";
import type { Logger } from "./core/logger.ts";
import { Paging } from "./core/paging.ts";
import { type Database, migrate, openDatabase, pendingMigrations } from "./db/database.ts";
import { serverEntities } from "./db/entities.ts";
import { serverKey } from "./db/server-keys.ts";
import { UnitOfWork } from "./db/unit-of-work.ts";
import type { ChangeFeed } from "./feed/feed.ts";
import { LocalFeed } from "./feed/local-feed.ts";
import { PgFeed } from "./feed/pg-feed.ts";
import type { StreamHub } from "./feed/stream-hub.ts";
import type { Module, ModuleContext, MountedModule } from "./modules/module.ts";
import { queueModule } from "./modules/queue.ts";
import { runnersModule } from "./modules/runners.ts";
import { runsModule } from "./modules/runs.ts";
import { sessionsModule } from "./modules/sessions.ts";
import { tasksModule } from "./modules/tasks.ts";
import { shareReasonlessAborts } from "./server/abort-reasons.ts";
import { createAuthGate, tenantKey, WARMUP_TENANT } from "./server/auth.ts";
import { createHealthService, DatabaseHealth } from "./server/health.ts";
import { bind, type HttpServer } from "./server/http.ts";
import { observeInterceptor, streamLimitInterceptor, validationInterceptor } from "./server/interceptors.ts";
import { createReflectionServices } from "./server/reflection.ts";
import { refuseInvalidUtf8AsBadInput } from "./server/utf8.ts";

/** Every module the server mounts. Adding a service means adding its module here, nothing else. */
export const MODULES: readonly Module[] = [
  runsModule,
  runnersModule,
  sessionsModule,
  queueModule,
  tasksModule,
];

/** Most calls one group commit takes, so that one transaction stays short. */
const MAX_WRITE_GROUP = 64;

/** Every table, for the ORM and the migration generator. */
export const allEntities = (modules: readonly Module[] = MODULES) => [
  ...serverEntities,
  ...modules.flatMap((m) => m.entities),
];

export interface App {
  readonly port: number;
  /** Settles once the warm-up of the paths a takeover does not need at once has run (after serving). */
  readonly restWarmedUp: Promise<void>;
  readonly db: Database;
  readonly health: DatabaseHealth;
  /** Every mounted module's stream hubs by name ("run-events", "runs"), for stats. */
  readonly hubs: ReadonlyMap<string, StreamHub<unknown>>;
  /**
   * Group commit: for the unit of work ("transactions") and each module's combined writes
   * ("appends"), how many groups ran and how many calls they carried.
   */
  writeStats(): Record<string, { groups: number; calls: number }>;
  /** Every module's gauges ("claims.waiting", ...). */
  gauges(): Record<string, number>;
  /** Graceful stop: NOT_SERVING, no new connections, open streams end with UNAVAILABLE, database closed. */
  close(): Promise<void>;
}

/** Opens the database and the feed, mounts every module, then serves; the whole server in one call. */
export async function startApp(
  config: Config,
  logger: Logger,
  modules: readonly Module[] = MODULES,
): Promise<App> {
  const { database } = config;
  shareReasonlessAborts();
  refuseInvalidUtf8AsBadInput();
  // The port first: a port in use is told in one line before seconds go into the database.
  // Connections that arrive meanwhile wait and are served once everything is ready.
  const bound = await bind({ ...config.server.listen, tls: config.server.tls }, logger);
  const cleanup: Array<() => Promise<void> | void> = [() => bound.close(0)];
  try {
    const db = await openDatabase(database.target, {
      entities: allEntities(modules),
      createMissingDatabase: database.migrateAtStart,
    });
    cleanup.unshift(() => db.close());
    if (database.migrateAtStart) {
      const applied = await migrate(db);
      if (applied.length > 0) logger.info({ migrations: applied }, "applied migrations");
    } else {
      const pending = await pendingMigrations(db);
      if (pending.length > 0) {
        throw new StartupError(
          `the database schema is behind this server (${pending.length} pending migrations: ${pending.join(", ")}); ` +
            "apply them with `npm run migrate` (or `make migrate`), or start with AGENTSTORE_MIGRATE=true",
        );
      }
    }
    const feed: ChangeFeed =
      database.target.kind === "postgres" ? new PgFeed(database.target.url, logger) : new LocalFeed(logger);
    await feed.start();
    cleanup.unshift(() => feed.close());

    const uow = new UnitOfWork(db, feed, {
      concurrentGroups: database.writeGroups,
      maxGroupSize: MAX_WRITE_GROUP,
    });
    const context: ModuleContext = {
      config,
      db,
      uow,
      feed,
      paging: new Paging(await serverKey(db, "page_tokens")),
      logger,
    };
    const mounted = modules.map((module) => module.mount(context));
    cleanup.unshift(async () => {
      for (const module of mounted) await module.close?.();
    });
    const hubs = new Map(mounted.flatMap((m) => [...m.hubs]));
    cleanup.unshift(() => {
      for (const hub of hubs.values()) hub.close();
    });
    const services = mounted.flatMap((m) => m.services);

    const health = new DatabaseHealth(db, config.server.healthIntervalMs, logger);
    await health.start();
    cleanup.unshift(() => health.shutdown());

    const shutdown = new AbortController();
    // Error details ride in google.protobuf.Any; reflecting their file lets buf curl decode them.
    const reflection = createReflectionServices(
      [...services, Health],
      [file_google_rpc_error_details, ...mounted.flatMap((m) => m.extraFiles ?? [])],
    );
    const routes = (router: ConnectRouter) => {
      for (const module of mounted) module.routes(router);
      router.service(
        Health,
        createHealthService(
          health,
          services.map((s) => s.typeName),
        ),
      );
      router.service(...reflection.v1);
      router.service(...reflection.v1alpha);
    };
    const interceptors = [
      observeInterceptor(logger),
      streamLimitInterceptor(config.server.maxStreamsPerTenant),
      validationInterceptor(),
    ];
    await warmUp("warmed up", mounted, routes, interceptors, logger, (m, t) => m.warmUp?.(t));
    const handler = connectNodeAdapter({
      routes,
      requestGate: createAuthGate(config.server.apiKeys),
      interceptors,
      readMaxBytes: config.server.maxMessageBytes,
      shutdownSignal: shutdown.signal,
      grpc: true,
      grpcWeb: true,
      connect: true,
    });
    const server: HttpServer = bound.serve(handler);
    logger.info(
      {
        port: server.port,
        pid: process.pid,
        host: config.server.listen.host,
        database: db.kind,
        tls: config.server.tls !== undefined,
        services: services.map((s) => s.typeName),
      },
      "agentstore serving",
    );
    // Each call of the background warm-up first lets the event loop turn: PGlite answers within
    // microtasks, so a chain of calls would otherwise hold real requests (and log writes) back
    // until it ends.
    const yieldFirst: Interceptor = (next) => async (req) => {
      await yieldToEventLoop();
      return next(req);
    };
    const restWarmedUp = warmUp(
      "warmed up the rest",
      mounted,
      routes,
      [yieldFirst, ...interceptors],
      logger,
      (m, t) => m.warmUpRest?.(t),
    );

    let closing: Promise<void> | undefined;
    return {
      port: server.port,
      db,
      restWarmedUp,
      health,
      hubs,
      gauges: () => Object.assign({}, ...mounted.map((m) => m.gauges?.() ?? {})),
      writeStats: () =>
        Object.assign({ transactions: uow.stats() }, ...mounted.map((m) => m.writeStats?.() ?? {})),
      close() {
        closing ??= (async () => {
          health.shutdown();
          shutdown.abort(
            new ConnectError("the server is shutting down; reconnect to resume", Code.Unavailable),
          );
          await server.close(config.server.shutdownGraceMs);
          await restWarmedUp;
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

/** Runs every module's warm-up of one phase through the real routes and interceptors, in process. */
async function warmUp(
  phase: string,
  mounted: readonly MountedModule[],
  routes: (router: ConnectRouter) => void,
  interceptors: Interceptor[],
  logger: Logger,
  warm: (module: MountedModule, transport: Transport) => Promise<void> | undefined,
): Promise<void> {
  const started = performance.now();
  const transport = createRouterTransport(routes, {
    router: { interceptors, requestGate: (ctx) => void ctx.values.set(tenantKey, WARMUP_TENANT) },
  });
  for (const module of mounted) {
    try {
      await warm(module, transport);
    } catch (err) {
      // A cold first call is slower, not wrong: serve anyway.
      logger.warn({ err }, "warm-up failed");
    }
  }
  logger.debug({ ms: Math.round(performance.now() - started) }, phase);
}
