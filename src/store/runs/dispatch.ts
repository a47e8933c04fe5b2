import type { ChangeFeed } from "../../feed/feed.ts";
import { WakeSignal } from "../../feed/wake-signal.ts";
import { PENDING_RUNS_CHANNEL } from "./model.ts";

/** Wakes waiting ClaimNextRun calls when a run of their tenant becomes PENDING, on any replica. */
export class PendingRunSignal extends WakeSignal {
  constructor(feed: ChangeFeed, lookMs: number) {
    super(feed, PENDING_RUNS_CHANNEL, lookMs);
  }
}
