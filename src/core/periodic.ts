import type { Logger } from "./logger.ts";

/**
 * Background work a replica repeats (sweeps, schedule ticks): one run at a time, never
 * overlapping itself, a failure logged and retried at the next interval, and `stop` waits for
 * the run in progress so that the database can close after it.
 */
export class Periodic {
  readonly #name: string;
  readonly #work: () => Promise<unknown>;
  readonly #logger: Logger;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<void> | undefined;

  constructor(name: string, work: () => Promise<unknown>, logger: Logger) {
    this.#name = name;
    this.#work = work;
    this.#logger = logger;
  }

  start(intervalMs: number): void {
    this.#timer = setInterval(() => void this.runNow(), intervalMs);
    this.#timer.unref();
  }

  /** Runs the work now, or joins the run in progress. */
  runNow(): Promise<void> {
    this.#running ??= this.#work()
      .then(
        () => {},
        (err: unknown) => {
          this.#logger.warn(
            { err: (err as Error).message },
            `${this.#name} failed; retrying at the next interval`,
          );
        },
      )
      .finally(() => {
        this.#running = undefined;
      });
    return this.#running;
  }

  async stop(): Promise<void> {
    clearInterval(this.#timer);
    await this.#running;
  }
}
