import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import {
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, describe, it } from "node:test";

const MODULE = new URL("../src/db/data-dir-lock.ts", import.meta.url);
const { lockDataDir } = (await import(MODULE.href)) as typeof import("../src/db/data-dir-lock.ts");
const LOCK_FILE = "agentstore.lock";

/**
 * A separate process that obeys one line at a time on stdin: `lock <dir>` answers "held <pid>" or
 * "refused <why>", `release` answers "released"; the end of stdin releases and exits. Its reads
 * block, so that contenders told to lock one after another all wake up at once.
 */
const CONTENDER = `
import { readSync } from "node:fs";
const { lockDataDir } = await import(process.argv[1]);
const byte = Buffer.alloc(1);
const readLine = () => {
  const bytes = [];
  for (;;) {
    let n;
    try { n = readSync(0, byte); } catch (err) { if (err.code === "EAGAIN") continue; throw err; }
    if (n === 0) return undefined;
    if (byte[0] === 10) return Buffer.from(bytes).toString("utf8");
    bytes.push(byte[0]);
  }
};
let release;
for (let line = readLine(); line !== undefined; line = readLine()) {
  if (line.startsWith("lock ")) {
    try {
      release = lockDataDir(line.slice("lock ".length));
      process.stdout.write("held " + process.pid + "\\n");
    } catch (err) {
      process.stdout.write("refused " + err.message + "\\n");
    }
  } else if (line === "release") {
    release?.();
    release = undefined;
    process.stdout.write("released\\n");
  }
}
release?.();
`;

interface Contender {
  readonly pid: number;
  send(command: string): void;
  /** The next line it prints; fails if it exits first. */
  next(): Promise<string>;
  /** Ends it: by closing its stdin (it releases first), or by a signal. */
  stop(signal?: NodeJS.Signals): Promise<void>;
}

function contender(): Contender {
  const child = spawn(process.execPath, ["--input-type=module", "-e", CONTENDER, MODULE.href], {
    stdio: ["pipe", "pipe", "inherit"],
  });
  const exited = once(child, "exit");
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  return {
    pid: child.pid ?? 0,
    send: (command) => child.stdin.write(`${command}\n`),
    next: async () => {
      const { value, done } = await lines.next();
      if (done) throw new Error(`contender ${child.pid} ended without a word`);
      return value;
    },
    stop: async (signal) => {
      if (child.exitCode === null && child.signalCode === null) {
        if (signal) child.kill(signal);
        else child.stdin.end();
      }
      await exited;
    },
  };
}

/** Locks `dir` in another process, then kills that process so that its lock file stays behind. */
async function leaveStaleLock(dir: string): Promise<number> {
  const holder = contender();
  holder.send(`lock ${dir}`);
  assert.equal(await holder.next(), `held ${holder.pid}`);
  await holder.stop("SIGKILL");
  assert.ok(existsSync(join(dir, LOCK_FILE)), "the killed holder's lock file stayed behind");
  return holder.pid;
}

const dirs: string[] = [];
function freshDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "agentstore-lock-"));
  dirs.push(dir);
  return dir;
}
after(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

const literal = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
const inUseBy = (dir: string, pid: number) =>
  new RegExp(`data directory ${literal(dir)} is in use by another agentstore process \\(pid ${pid}\\)`);

describe("data directory lock", () => {
  it("a live holder keeps it: another process is refused with the directory and the holder's pid", async () => {
    const dir = freshDir();
    const holder = contender();
    try {
      holder.send(`lock ${dir}`);
      assert.equal(await holder.next(), `held ${holder.pid}`);
      assert.throws(
        () => lockDataDir(dir),
        (err: Error) => err.name === "StartupError" && inUseBy(dir, holder.pid).test(err.message),
      );
      assert.ok(existsSync(join(dir, LOCK_FILE)), "a refused contender leaves the holder's lock alone");
      holder.send("release");
      assert.equal(await holder.next(), "released");
    } finally {
      await holder.stop();
    }
    assert.ok(!existsSync(join(dir, LOCK_FILE)), "the holder removed its lock when it let go");
    const release = lockDataDir(dir);
    release();
    release();
    assert.deepEqual(readdirSync(dir), []);
  });

  it("a lock left by a killed process is taken over, and nothing is left behind after release", async () => {
    const dir = freshDir();
    const dead = await leaveStaleLock(dir);
    const release = lockDataDir(dir);
    const lock = readFileSync(join(dir, LOCK_FILE), "utf8");
    assert.equal(lock.split("\n")[0], String(process.pid), "the pid is the first line, as before");
    assert.ok(!lock.includes(String(dead)));
    release();
    assert.deepEqual(readdirSync(dir), []);
  });

  it("a lock file without a pid is its owner's while young, and stale once old", () => {
    const dir = freshDir();
    const path = join(dir, LOCK_FILE);
    for (const content of ["", "12ab garbage"]) {
      writeFileSync(path, content);
      assert.throws(
        () => lockDataDir(dir),
        (err: Error) => err.name === "StartupError" && err.message.includes(dir),
        `a young lock file containing ${JSON.stringify(content)} is held`,
      );
      assert.equal(readFileSync(path, "utf8"), content, "and left alone");
      const aMinuteAgo = new Date(Date.now() - 60_000);
      utimesSync(path, aMinuteAgo, aMinuteAgo);
      const release = lockDataDir(dir);
      assert.equal(readFileSync(path, "utf8").split("\n")[0], String(process.pid));
      release();
      assert.deepEqual(readdirSync(dir), []);
    }
  });

  it("processes racing for a stale lock: exactly one takes it, every other is told who has it", async () => {
    const template = freshDir();
    const dead = await leaveStaleLock(template);
    // The lock file as this module writes it, and as the previous version wrote it (a bare pid).
    const staleLocks = [readFileSync(join(template, LOCK_FILE)), Buffer.from(`${dead}\n`)];
    const racers = Array.from({ length: 6 }, () => contender());
    try {
      for (let trial = 0; trial < 30; trial++) {
        const dir = freshDir();
        writeFileSync(join(dir, LOCK_FILE), staleLocks[trial % staleLocks.length] ?? "");
        for (const racer of racers) racer.send(`lock ${dir}`);
        const outcomes = await Promise.all(racers.map((racer) => racer.next()));
        const holders = outcomes.filter((line) => line.startsWith("held "));
        assert.equal(holders.length, 1, `trial ${trial}: one holder, got:\n${outcomes.join("\n")}`);
        const winner = Number((holders[0] ?? "").slice("held ".length));
        for (const line of outcomes.filter((l) => !l.startsWith("held "))) {
          assert.match(line, inUseBy(dir, winner), `trial ${trial}`);
        }
        assert.equal(readFileSync(join(dir, LOCK_FILE), "utf8").split("\n")[0], String(winner));
        for (const racer of racers) racer.send("release");
        for (const racer of racers) assert.equal(await racer.next(), "released");
        assert.deepEqual(readdirSync(dir), [], `trial ${trial}: the winner cleaned up after itself`);
      }
    } finally {
      await Promise.all(racers.map((racer) => racer.stop()));
    }
  });
});
