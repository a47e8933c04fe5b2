import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { createLogger } from "../src/core/logger.ts";
import { LocalFeed } from "../src/feed/local-feed.ts";
import { LogHub, type StreamRead, type StreamSource, VersionHub } from "../src/feed/stream-hub.ts";
import { eventually, range } from "./helpers/assertions.ts";

/**
 * The stream hubs on their own, over in-memory sources: here "a follower that does not read" is
 * exact (no transport buffers in between), and head() can be held open to race a follower's
 * departure. Every wait is for a state (followers registered, entries seen), never for a sleep.
 */
class MemoryLog implements StreamSource<string> {
  readonly channel = "test";
  readonly entries: string[] = [];
  reads = 0;
  heads = 0;
  /** While set, head() waits for it. */
  gate: Promise<void> | undefined;
  /** Most bytes (characters) one read returns, past its first entry, like the real byte budget. */
  maxBytes = Number.POSITIVE_INFINITY;

  async head(): Promise<number> {
    this.heads++;
    await this.gate;
    return this.entries.length;
  }

  async read(_tenant: string, _key: string, afterSeq: number, limit: number): Promise<StreamRead<string>> {
    this.reads++;
    const picked = [];
    let bytes = 0;
    for (const [i, value] of this.entries.slice(afterSeq, afterSeq + limit).entries()) {
      if (picked.length > 0 && bytes + value.length > this.maxBytes) break;
      bytes += value.length;
      picked.push({ seq: afterSeq + i + 1, terminal: value === "end", bytes: value.length, value });
    }
    const through = picked.at(-1)?.seq ?? afterSeq;
    return { entries: picked, through, more: through < this.entries.length };
  }
}

const logger = createLogger("silent");
const options = { bufferEntries: 4, bufferBytes: 1024, pageSize: 3, pollIntervalMs: 60_000 };

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

/** Follows in the background, recording seqs; `done` settles when the follow ends. */
function record(iterable: AsyncIterable<{ seq: number }>) {
  const seen: number[] = [];
  const done = (async () => {
    for await (const entry of iterable) seen.push(entry.seq);
  })();
  return { seen, done };
}

describe("LogHub", () => {
  it("a follower that falls behind the buffer catches up from the source, in order", async () => {
    const { log, hub, append } = setup();
    const fast = record(hub.follow("t", "k", 0, new AbortController().signal));
    const slow = hub.follow("t", "k", 0, new AbortController().signal);
    const slowFirst = slow.next();
    await eventually(() => assert.equal(hub.stats().followers, 2));
    for (const i of range(1, 20)) {
      append(`e${i}`);
      await eventually(() => assert.equal(fast.seen.length, i));
    }
    append("end");
    await fast.done;
    assert.deepEqual(fast.seen, range(1, 21));
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
    const followers = range(1, 10).map(() => record(hub.follow("t", "k", 0, new AbortController().signal)));
    // Registered, and the topic knows its head: from here on only changes cause reads.
    await eventually(() => assert.equal(hub.stats().followers, 10));
    await eventually(() => assert.ok(log.heads >= 1));
    const readsBefore = log.reads;
    for (const [i, value] of ["a", "b", "end"].entries()) {
      append(value);
      await eventually(() => {
        for (const f of followers) assert.equal(f.seen.length, i + 1);
      });
    }
    await Promise.all(followers.map((f) => f.done));
    for (const f of followers) assert.deepEqual(f.seen, [1, 2, 3]);
    assert.equal(log.reads - readsBefore, 3, "one read per change");
    assert.equal(hub.stats().topics, 0);
  });

  it("a read cut short by its byte budget is continued at once, not at the next poll", async () => {
    const { log, hub, append } = setup();
    log.maxBytes = 10;
    const follower = record(hub.follow("t", "k", 0, new AbortController().signal));
    await eventually(() => assert.equal(hub.stats().followers, 1));
    await eventually(() => assert.ok(log.heads >= 1));
    // One change notification for many large entries: each read returns one of them. With the
    // poll an hour away, only continuing while `more` says so can deliver all of them.
    log.entries.push(...range(1, 12).map((i) => `big-entry-${i}`), "end");
    append();
    await follower.done;
    assert.deepEqual(follower.seen, range(1, 13));
    hub.close();
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
    await eventually(() => assert.equal(log.heads, 1));
    controller.abort(new Error("gone"));
    assert.equal(((await ended) as Error).message, "gone");
    open();
    await eventually(() => assert.equal(hub.stats().topics, 0));
    assert.equal(log.reads, 0, "nobody follows, so nothing reads");
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
    await eventually(() => assert.equal(log.heads, 1));
    append("during-start");
    log.entries.push("end");
    open();
    assert.equal((await first).value?.value, "during-start");
    assert.equal((await follower.next()).value?.value, "end");
    hub.close();
  });
});

/** Rows that each hold their latest version, like runs under WatchRuns. */
class MemoryTable implements StreamSource<string> {
  readonly channel = "rows";
  /** key -> [version, value] */
  readonly rows = new Map<string, [number, string]>();
  version = 0;
  reads = 0;
  heads = 0;

  async head(): Promise<number> {
    this.heads++;
    return this.version;
  }

  async read(_tenant: string, _key: string, after: number, limit: number): Promise<StreamRead<string>> {
    this.reads++;
    const changed = [...this.rows.values()]
      .filter(([v]) => v > after)
      .sort(([a], [b]) => a - b)
      .slice(0, limit);
    const entries = changed.map(([seq, value]) => ({ seq, terminal: false, bytes: value.length, value }));
    const full = entries.length >= limit;
    const last = entries.at(-1)?.seq ?? after;
    return { entries, through: full ? last : Math.max(this.version, last), more: full };
  }
}

describe("VersionHub", () => {
  function setupTable() {
    const feed = new LocalFeed(logger);
    const table = new MemoryTable();
    const hub = new VersionHub(table, feed, options, logger);
    const write = (key: string, value: string) => {
      table.version++;
      table.rows.set(key, [table.version, value]);
      feed.committed([{ channel: "rows", tenant: "t", key: "s", seq: table.version }]);
    };
    const remove = (key: string) => {
      table.version++;
      table.rows.delete(key);
      feed.committed([{ channel: "rows", tenant: "t", key: "s", seq: table.version }]);
    };
    return { table, hub, write, remove };
  }

  it("sends every row changed after a version once, in its latest state, then live changes", async () => {
    const { hub, write } = setupTable();
    for (const i of range(1, 5)) write(`r${i}`, `r${i}@1`);
    write("r2", "r2@2");
    const controller = new AbortController();
    const seen: Array<[number, string]> = [];
    const done = (async () => {
      for await (const entry of hub.follow("t", "s", 1, controller.signal))
        seen.push([entry.seq, entry.value]);
    })().catch(() => {});
    await eventually(() => assert.equal(seen.length, 4));
    assert.deepEqual(seen, [
      [3, "r3@1"],
      [4, "r4@1"],
      [5, "r5@1"],
      [6, "r2@2"],
    ]);
    write("r9", "r9@1");
    await eventually(() => assert.deepEqual(seen.at(-1), [7, "r9@1"]));
    controller.abort();
    await done;
    hub.close();
  });

  it("passes over versions that left no row (deleted) instead of waiting or failing", async () => {
    const { hub, write, remove } = setupTable();
    write("a", "a@1");
    const controller = new AbortController();
    const seen: number[] = [];
    const done = (async () => {
      for await (const entry of hub.follow("t", "s", 0, controller.signal)) seen.push(entry.seq);
    })().catch((err: unknown) => err);
    await eventually(() => assert.deepEqual(seen, [1]));
    write("b", "b@1");
    remove("b");
    write("c", "c@1");
    await eventually(() => assert.deepEqual(seen.at(-1), 4));
    controller.abort();
    assert.equal(((await done) as Error).name, "AbortError", "the follow ended only by its abort");
    hub.close();
  });

  it("from now skips the past", async () => {
    const { table, hub, write } = setupTable();
    write("old", "old@1");
    const controller = new AbortController();
    const seen: string[] = [];
    const done = (async () => {
      for await (const entry of hub.follow("t", "s", "now", controller.signal)) seen.push(entry.value);
    })().catch(() => {});
    // Once head() has answered (and the microtasks after it ran), a write can only be new.
    await eventually(() => assert.equal(table.heads, 1));
    await new Promise((resolve) => setImmediate(resolve));
    write("new", "new@1");
    await eventually(() => assert.deepEqual(seen, ["new@1"]));
    controller.abort();
    await done;
    hub.close();
  });
});
