import { randomUUID } from "node:crypto";
import { hostname } from "node:os";
import type { TaskPushNotificationConfig } from "../../gen/agentstore/v1/a2a_task_pb.ts";
import type { Logger } from "../core/logger.ts";
import { postJson } from "../core/outbound-http.ts";
import type { Lookup } from "../core/outbound-url.ts";
import { SecretError } from "../core/secrets.ts";
import type { ChangeFeed } from "../feed/feed.ts";
import type { PushConfigStore } from "../store/a2a/push-configs.ts";
import {
  type ClaimedDelivery,
  PUSH_DELIVERY_CHANNEL,
  type PushDeliveryStore,
} from "../store/a2a/push-deliveries.ts";

/** Answer bytes a receiver may send back; only its status matters. */
const MAX_RESPONSE_BYTES = 64 * 1024;

/** After a failed look (the database away), the loop tries again after this. */
const ERROR_PAUSE_MS = 1_000;

export interface PushDeliveryWorkerOptions {
  /** POSTs in flight at once on this replica. */
  concurrency: number;
  timeoutMs: number;
  allowPrivateUrls: boolean;
  /** Even with no news, the loop looks again this often (a notification may be lost). */
  idleLookMs: number;
  lookup?: Lookup;
}

/**
 * A replica's push sender: takes due deliveries (any tenant's, see claimDeliveries for order and
 * exclusivity), POSTs them, records the outcome. It looks again at once when a delivery it sent is
 * settled (the config's next one may go), when the feed tells of new deliveries from any replica,
 * at the next retry's time, and every idleLookMs in any case. A delivery is held under a lease
 * longer than a POST may take; if this replica dies holding it, another takes it when the lease
 * runs out (a receiver may then see it twice: at least once).
 */
export class PushDeliveryWorker {
  readonly #deliveries: PushDeliveryStore;
  readonly #configs: PushConfigStore;
  readonly #logger: Logger;
  readonly #options: PushDeliveryWorkerOptions;
  readonly #workerId = `${hostname()}-${process.pid}-${randomUUID().slice(0, 8)}`;
  readonly #leaseMs: number;
  readonly #inFlight = new Set<Promise<void>>();
  readonly #unsubscribe: () => void;
  #stopped = false;
  #woken = false;
  #wake: (() => void) | undefined;
  #loop: Promise<void> | undefined;

  constructor(
    deliveries: PushDeliveryStore,
    configs: PushConfigStore,
    feed: ChangeFeed,
    logger: Logger,
    options: PushDeliveryWorkerOptions,
  ) {
    this.#deliveries = deliveries;
    this.#configs = configs;
    this.#logger = logger;
    this.#options = options;
    // A POST ends at its timeout; the margin covers recording its outcome.
    this.#leaseMs = options.timeoutMs + 5_000;
    this.#unsubscribe = feed.subscribe((change) => {
      if (change.channel === PUSH_DELIVERY_CHANNEL) this.#poke();
    });
  }

  start(): void {
    this.#loop ??= this.#run();
  }

  /** POSTs in flight now. */
  sending(): number {
    return this.#inFlight.size;
  }

  /** Stops taking deliveries and waits for the POSTs in flight to be recorded. */
  async stop(): Promise<void> {
    this.#stopped = true;
    this.#unsubscribe();
    this.#poke();
    await this.#loop;
    await Promise.all([...this.#inFlight]);
  }

  #poke(): void {
    this.#woken = true;
    this.#wake?.();
  }

  async #run(): Promise<void> {
    while (!this.#stopped) {
      this.#woken = false;
      let pause: number;
      try {
        const free = this.#options.concurrency - this.#inFlight.size;
        if (free > 0) {
          const rows = await this.#deliveries.claim(free, this.#workerId, this.#leaseMs);
          for (const row of rows) this.#send(row);
          if (rows.length === free) continue;
        }
        pause = this.#options.idleLookMs;
        const due = await this.#deliveries.nextDue();
        if (due !== null) pause = Math.max(0, Math.min(pause, due.getTime() - Date.now()));
      } catch (err) {
        this.#logger.warn(
          { err: (err as Error).message },
          "push delivery: could not look for due deliveries",
        );
        pause = ERROR_PAUSE_MS;
      }
      await this.#sleep(pause);
    }
  }

  #sleep(ms: number): Promise<void> {
    if (this.#woken || this.#stopped) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const timer = setTimeout(done, ms);
      this.#wake = done;
      function done() {
        clearTimeout(timer);
        resolve();
      }
    }).finally(() => {
      this.#wake = undefined;
    });
  }

  #send(claimed: ClaimedDelivery): void {
    const row = claimed.delivery;
    const sending = this.#deliver(claimed)
      .catch((err: unknown) => {
        // The outcome could not be recorded (the database away): the lease runs out and the
        // delivery is sent again.
        this.#logger.warn(
          { err: (err as Error).message, tenant: row.tenantId, task: row.taskId, delivery: row.id },
          "push delivery: could not record the outcome",
        );
      })
      .finally(() => {
        this.#inFlight.delete(sending);
        this.#poke();
      });
    this.#inFlight.add(sending);
  }

  async #deliver({ delivery: row, config: sealed, body }: ClaimedDelivery): Promise<void> {
    if (sealed === null || body === null) {
      // Deleted meanwhile (its deliveries are deleted with it): nothing is left to record.
      await this.#deliveries.failed(row, this.#workerId, {
        error: "the task or the config is gone",
        status: null,
        permanent: true,
        retryDelayMs: null,
      });
      return;
    }
    let config: TaskPushNotificationConfig;
    try {
      config = this.#configs.open(sealed);
    } catch (err) {
      if (!(err instanceof SecretError)) throw err;
      await this.#deliveries.failed(row, this.#workerId, {
        error: "the config's token or credentials do not open under the configured keys",
        status: null,
        permanent: true,
        retryDelayMs: null,
      });
      return;
    }
    const headers: Record<string, string> = {
      "user-agent": "agentstore",
      "a2a-notification-seq": String(row.seq),
      "a2a-delivery-id": row.id,
    };
    if (config.token !== "") {
      // a2a-js and a2a-python read the X- spelling, a2a-go the other: both carry it.
      headers["x-a2a-notification-token"] = config.token;
      headers["a2a-notification-token"] = config.token;
    }
    if (config.authentication !== undefined) {
      const { scheme, credentials } = config.authentication;
      headers.authorization = credentials === "" ? scheme : `${scheme} ${credentials}`;
    }
    const outcome = await postJson(config.url, body, headers, {
      timeoutMs: this.#options.timeoutMs,
      maxResponseBytes: MAX_RESPONSE_BYTES,
      allowPrivate: this.#options.allowPrivateUrls,
      lookup: this.#options.lookup,
    });
    if (outcome.ok) {
      await this.#deliveries.delivered(row, this.#workerId, outcome.status);
      return;
    }
    const settled = await this.#deliveries.failed(row, this.#workerId, {
      error: outcome.error,
      status: outcome.status,
      permanent: outcome.permanent,
      retryDelayMs: outcome.retryAfterMs,
    });
    if (settled?.state === "dead") {
      this.#logger.warn(
        { tenant: row.tenantId, task: row.taskId, config: row.configId, seq: row.seq, error: outcome.error },
        "push delivery is dead",
      );
    }
  }
}
