import pg from "pg";
import type { Logger } from "../core/logger.ts";
import { type SqlRunner, statement } from "../db/sql.ts";
import { type Change, type ChangeFeed, Listeners } from "./feed.ts";

const CHANNEL = "agentstore_changes";
/** NOTIFY payloads must stay under 8000 bytes; changes beyond that go in further notifications. */
const PAYLOAD_LIMIT = 7_000;

const notify = statement<[channel: string, payload: string]>()({
  name: "feed.notify",
  text: "select pg_notify($1, $2)",
  row: {},
});

type WireChange = [channel: string, tenant: string, key: string, seq: number];
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

  readonly notifyChannel = CHANNEL;

  /**
   * One NOTIFY per transaction carrying all its changes (a JSON array), not one per change: a
   * notifying transaction takes PostgreSQL's notify lock through its commit, so fewer is better.
   */
  async stage(sql: SqlRunner, changes: readonly Change[]): Promise<void> {
    let batch: string[] = [];
    let bytes = 2;
    for (const c of changes) {
      const encoded = JSON.stringify([c.channel, c.tenant, c.key, c.seq] satisfies WireChange);
      if (batch.length > 0 && bytes + encoded.length + 1 > PAYLOAD_LIMIT) {
        await sql.all(notify, CHANNEL, `[${batch.join(",")}]`);
        batch = [];
        bytes = 2;
      }
      batch.push(encoded);
      bytes += Buffer.byteLength(encoded) + 1;
    }
    if (batch.length > 0) await sql.all(notify, CHANNEL, `[${batch.join(",")}]`);
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
    let changes: WireChange[];
    try {
      changes = JSON.parse(payload ?? "") as WireChange[];
      if (!Array.isArray(changes)) throw new Error("not an array");
    } catch (err) {
      this.#logger.warn({ err }, "ignored a malformed change notification");
      return;
    }
    for (const [channel, tenant, key, seq] of changes) this.#changes.emit({ channel, tenant, key, seq });
  }
}
