import type { DescFile, DescService } from "@bufbuild/protobuf";
import type { ConnectRouter, Transport } from "@connectrpc/connect";
import type { EntitySchema } from "@mikro-orm/core";
import type { Config } from "../config/index.ts";
import type { Logger } from "../core/logger.ts";
import type { Paging } from "../core/paging.ts";
import type { Database } from "../db/database.ts";
import type { UnitOfWork } from "../db/unit-of-work.ts";
import type { ChangeFeed } from "../feed/feed.ts";
import type { StreamHub } from "../feed/stream-hub.ts";

/**
 * A module is one slice of the product (runs, later runners, sessions, queue, a2a): its tables,
 * its proto services and the stream hubs behind them. app.ts lists modules; everything the server
 * derives from them (the routes, the health service names, reflection, the ORM's entities, the
 * hubs to close at shutdown) comes from what they declare here, never from a hand-kept list.
 */
export interface Module {
  readonly name: string;
  /** The module's tables, for the ORM and the migration generator. */
  readonly entities: readonly EntitySchema[];
  mount(context: ModuleContext): MountedModule;
}

/** What every module is built from: shared infrastructure, passed in, never imported as globals. */
export interface ModuleContext {
  readonly config: Config;
  readonly db: Database;
  readonly uow: UnitOfWork;
  readonly feed: ChangeFeed;
  readonly paging: Paging;
  readonly logger: Logger;
}

export interface MountedModule {
  /** The proto services this module serves (for health and reflection). */
  readonly services: readonly DescService[];
  /** Files of messages that are not part of a service but reach clients (inside Any), for reflection. */
  readonly extraFiles?: readonly DescFile[];
  /** Registers the services' handlers. */
  routes(router: ConnectRouter): void;
  /** Calls combined by the module's own combined writes (group commit), by name, for stats. */
  writeStats?(): Record<string, { groups: number; calls: number }>;
  /** Current levels (waiting claims, ...) by name, for tests and metrics. */
  gauges?(): Record<string, number>;
  /** Stops the module's background work (sweepers); called at shutdown, before the database closes. */
  close?(): Promise<void> | void;
  /** The module's stream hubs by name, for stats and shutdown. */
  readonly hubs: ReadonlyMap<string, StreamHub<unknown>>;
  /**
   * Exercises the calls a replica that takes over is hit with at once (claims, appends, streams,
   * leases), through the real handlers and interceptors over an in-process transport, before the
   * server accepts calls: those first calls then cost what every later one does (protovalidate
   * compiles its rules per message type on first use, the ORM builds its mappers, the database
   * plans each statement). Calls run as a tenant no API key can name, and clean up after
   * themselves.
   */
  warmUp?(transport: Transport): Promise<void>;
  /**
   * The same for every other call (lists, stats, admin paths), run in the background right after
   * the server serves: a start is not held up by paths a failover does not need at once, and a
   * call that comes before its warm-up merely pays its own first-call cost.
   */
  warmUpRest?(transport: Transport): Promise<void>;
}
