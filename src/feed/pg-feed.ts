import type { EntityManager } from "@mikro-orm/postgresql";
import pg from "pg";
import type { Logger } from "../logger.ts";
import { type Change, type ChangeFeed, Listeners } from "./feed.ts";

const CHANNEL = "agentstore_changes";
const HEARTBEAT_INTERVAL_MS = 5_000;
const HEARTBEAT_TIMEOUT_MS = 5_000;

/**
 * Cross-replica feed over PostgreSQL LISTEN/NOTIFY. Writers NOTIFY inside their transaction, so a
 * notification is delivered exactly when (and only if) its data committed. Each process holds one
 * dedicated LISTEN connection; when it drops, the feed reconnects with backoff and asks every
 * subscriber to resync, because notifications sent meanwhile are lost.
 */
export class PgFeed implements ChangeFeed {
  readonly #url: string;
  readonly #logger: Logger;
  readonly #changes: Listeners<[Change]>;
  readonly #resyncs: Listeners<[]>;
  #client: pg.Client | undefined;
  #closed = false;
  #attempt = 0;
  #reconnectTimer: NodeJS.Timeout | undefined;
  #heartbeat: NodeJS.Timeout | undefined;

  constructor(url: string, logger: Logger) {
    this.#url = url;
    this.#logger = logger;
    const onError = (err: unknown) => logger.error({ err }, "change listener failed");
    this.#changes = new Listeners(onError);
    this.#resyncs = new Listeners(onError);
  }

  async stage(tx: EntityManager, changes: readonly Change[]): Promise<void> {
    for (const c of changes) {
      await tx.execute("select pg_notify(?, ?)", [
        CHANNEL,
        JSON.stringify([c.channel, c.tenant, c.key, c.seq]),
      ]);
    }
  }

  committed(): void {}

  subscribe(listener: (change: Change) => void): () => void {
    return this.#changes.add(listener);
  }

  onResync(listener: () => void): () => void {
    return this.#resyncs.add(listener);
  }

  /** Connects the listener; a first failure is thrown so that a misconfigured start fails loudly. */
  async start(): Promise<void> {
    await this.#connect();
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#reconnectTimer);
    clearInterval(this.#heartbeat);
    const client = this.#client;
    this.#client = undefined;
    await client?.end().catch(() => {});
  }

  async #connect(): Promise<void> {
    const client = new pg.Client({
      connectionString: this.#url,
      keepAlive: true,
      connectionTimeoutMillis: 5_000,
    });
    client.on("notification", (msg) => this.#onNotification(msg.payload));
    client.on("error", (err) => {
      this.#logger.warn({ err: err.message }, "change feed connection failed");
      this.#lost(client);
    });
    client.on("end", () => this.#lost(client));
    try {
      await client.connect();
      await client.query(`listen ${CHANNEL}`);
    } catch (err) {
      client.removeAllListeners("end");
      await client.end().catch(() => {});
      throw err;
    }
    if (this.#closed) {
      await client.end().catch(() => {});
      return;
    }
    this.#client = client;
    this.#attempt = 0;
    this.#startHeartbeat(client);
  }

  /**
   * A half-open TCP connection loses notifications without an error, and TCP keepalive takes
   * minutes to notice. A query on the LISTEN connection every few seconds notices within one
   * timeout, and the reconnect that follows resyncs every stream.
   */
  #startHeartbeat(client: pg.Client): void {
    clearInterval(this.#heartbeat);
    this.#heartbeat = setInterval(() => {
      let timer: NodeJS.Timeout | undefined;
      Promise.race([
        client.query("select 1"),
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Error("no answer within 5 s")), HEARTBEAT_TIMEOUT_MS);
        }),
      ])
        .catch((err: Error) => {
          this.#logger.warn({ err: err.message }, "change feed heartbeat failed");
          this.#lost(client);
        })
        .finally(() => clearTimeout(timer));
    }, HEARTBEAT_INTERVAL_MS);
    this.#heartbeat.unref();
  }

  #lost(client: pg.Client): void {
    if (this.#client !== client || this.#closed) return;
    this.#client = undefined;
    clearInterval(this.#heartbeat);
    client.removeAllListeners();
    client.on("error", () => {});
    client.end().catch(() => {});
    this.#scheduleReconnect();
  }

  #scheduleReconnect(): void {
    if (this.#closed) return;
    const delay = Math.min(5_000, 100 * 2 ** this.#attempt++);
    this.#reconnectTimer = setTimeout(() => {
      this.#connect().then(
        () => {
          this.#logger.info("change feed reconnected");
          this.#resyncs.emit();
        },
        (err: Error) => {
          this.#logger.warn({ err: err.message, retryInMs: delay }, "change feed reconnect failed");
          this.#scheduleReconnect();
        },
      );
    }, delay);
    this.#reconnectTimer.unref();
  }

  #onNotification(payload: string | undefined): void {
    try {
      const [channel, tenant, key, seq] = JSON.parse(payload ?? "") as [string, string, string, number];
      this.#changes.emit({ channel, tenant, key, seq });
    } catch (err) {
      this.#logger.warn({ err }, "ignored a malformed change notification");
    }
  }
}
