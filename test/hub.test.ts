import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { LogHub, type LogSource } from "../src/feed/hub.ts";
import { LocalFeed } from "../src/feed/local-feed.ts";
import { createLogger } from "../src/logger.ts";
import { range } from "./helpers/assertions.ts";

/**
 * LogHub on its own, over an in-memory log: here "a follower that does not read" is exact (no
 * transport buffers in between), and head() can be held open to race a follower's departure.
 */
class MemoryLog implements LogSource<string> {
  readonly channel = "test";
  readonly entries: string[] = [];
  reads = 0;
  heads = 0;
  /** While set, head() waits for it. */
  gate: Promise<void> | undefined;

  async head(): Promise<number> {
    this.heads++;
    await this.gate;
    return this.entries.length;
  }

  async read(_tenant: string, _key: string, afterSeq: number, limit: number) {
    this.reads++;
    return this.entries.slice(afterSeq, afterSeq + limit).map((value, i) => ({
      seq: afterSeq + i + 1,
      terminal: value === "end",
      bytes: value.length,
      value,
    }));
  }
}

const logger = createLogger("silent");
const options = { bufferEntries: 4, bufferBytes: 1024, pageSize: 3, pollIntervalMs: 20 };

function setup() {
  const feed = new LocalFeed(logger);
  const log = new MemoryLog();
  const hub = new LogHub(log, feed, options, logger);
  const append = (...values: string[]) => {
    log.entries.push(...values);
    feed.committed([{ channel: "test", tenant: "t", key: "k", seq: log.entries.length }]);
  };
  return { feed, log, hub, append };
}

const tick = (ms = 0) => new Promise((resolve) => setTimeout(resolve, ms));

describe("LogHub", () => {
  it("a follower that falls behind the buffer catches up from the source, in order", async () => {
    const { log, hub, append } = setup();
    const fast = hub.follow("t", "k", 0, new AbortController().signal);
    const slow = hub.follow("t", "k", 0, new AbortController().signal);
    const fastSeen: number[] = [];
    const reading = (async () => {
      for await (const entry of fast) fastSeen.push(entry.seq);
    })();
    const slowFirst = slow.next();
    await tick(5);
    for (const i of range(1, 20)) {
      append(`e${i}`);
      await tick(1);
    }
    append("end");
    await reading;
    assert.deepEqual(fastSeen, range(1, 21));
    assert.ok(hub.stats().bufferedEntries <= options.bufferEntries, "the buffer keeps its bound");
    const readsBefore = log.reads;
    const slowSeen = [(await slowFirst).value?.seq];
    for await (const entry of slow) slowSeen.push(entry.seq);
    assert.deepEqual(slowSeen, range(1, 21));
    assert.ok(log.reads > readsBefore, "entries that left the buffer came from the source");
    hub.close();
  });

  it("followers that arrive together share one read per change", async () => {
    const { log, hub, append } = setup();
    const followers = range(1, 10).map(() => hub.follow("t", "k", 0, new AbortController().signal));
    const seen = followers.map(() => [] as number[]);
    const done = followers.map(async (f, i) => {
      for await (const entry of f) seen[i]?.push(entry.seq);
    });
    await tick(5);
    const readsBefore = log.reads;
    append("a");
    await tick(5);
    append("b");
    await tick(5);
    append("end");
    await Promise.all(done);
    for (const s of seen) assert.deepEqual(s, [1, 2, 3]);
    assert.ok(log.reads - readsBefore <= 3, `one read per change, got ${log.reads - readsBefore}`);
    assert.equal(hub.stats().topics, 0);
  });

  it("a follower that leaves while head() is pending leaves no timer and no reads behind", async () => {
    const { log, hub } = setup();
    let open: () => void = () => {};
    log.gate = new Promise((resolve) => {
      open = resolve;
    });
    const controller = new AbortController();
    const follower = hub.follow("t", "k", 0, controller.signal);
    const ended = follower.next().catch((err: unknown) => err);
    await tick(5);
    controller.abort(new Error("gone"));
    assert.equal(((await ended) as Error).message, "gone");
    open();
    await tick(100);
    const reads = log.reads;
    await tick(100);
    assert.equal(log.reads, reads, "no poll timer keeps reading for a topic nobody follows");
    assert.equal(hub.stats().topics, 0);
    hub.close();
  });

  it("a change committed while head() runs is not missed", async () => {
    const { log, hub, append } = setup();
    let open: () => void = () => {};
    log.gate = new Promise((resolve) => {
      open = resolve;
    });
    const follower = hub.follow("t", "k", 0, new AbortController().signal);
    const first = follower.next();
    await tick(5);
    append("during-start");
    log.entries.push("end");
    open();
    assert.equal((await first).value?.value, "during-start");
    assert.equal((await follower.next()).value?.value, "end");
    hub.close();
  });
});
