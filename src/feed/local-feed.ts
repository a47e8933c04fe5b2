import type { Logger } from "../core/logger.ts";
import { type Change, type ChangeFeed, Listeners } from "./feed.ts";

/** In-process feed for the embedded database: one process owns it, so an event emitter suffices. */
export class LocalFeed implements ChangeFeed {
  readonly #changes: Listeners<[Change]>;
  readonly #resyncs: Listeners<[]>;

  constructor(logger: Logger) {
    const onError = (err: unknown) => logger.error({ err }, "change listener failed");
    this.#changes = new Listeners(onError);
    this.#resyncs = new Listeners(onError);
  }

  readonly notifyChannel = undefined;

  async stage(): Promise<void> {}

  committed(changes: readonly Change[]): void {
    for (const change of changes) this.#changes.emit(change);
  }

  subscribe(listener: (change: Change) => void): () => void {
    return this.#changes.add(listener);
  }

  onResync(listener: () => void): () => void {
    return this.#resyncs.add(listener);
  }

  async start(): Promise<void> {}

  async close(): Promise<void> {}
}
