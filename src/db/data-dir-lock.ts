import { randomBytes } from "node:crypto";
import {
  closeSync,
  fstatSync,
  linkSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { join, resolve } from "node:path";
import { StartupError } from "../core/errors.ts";

const LOCK_FILE = "agentstore.lock";
/**
 * Only a previous version wrote its pid into a lock file it had already created, so a file with
 * no pid may be an owner still writing. After this long its owner must have died in between.
 */
const UNWRITTEN_GRACE_MS = 5_000;
/**
 * A claim is only left behind by a process that dies between two file operations, and each level
 * recovers from one such death: running out of levels takes that many deaths in a row.
 */
const MAX_CLAIM_DEPTH = 4;
/** Losing a race means another live process is mid-takeover: a few short waits let it finish. */
const ATTEMPTS = 12;

/**
 * The embedded database is one process's files: a second process opening them would corrupt them
 * (PGlite has no locking of its own). The lock is a file holding the owner's pid (first line, as
 * before, so that older versions still read it), a random token and the owner's start time.
 *
 * It is written whole to a file of its own and then hard-linked to the lock's name, because
 * link() fails if the name exists: a lock file is never seen half-written and is only ever
 * created by one process. A lock left by a process that is gone (a kill -9, a power cut) is
 * taken over, and only the one contender that wins a claim on that very file may replace it; see
 * take().
 */
export function lockDataDir(dataDir: string): () => void {
  const dir = resolve(dataDir);
  mkdirSync(dir, { recursive: true });
  const path = join(dir, LOCK_FILE);
  const token = randomBytes(12).toString("hex");
  const mine = join(dir, `${LOCK_FILE}.${token}.tmp`);
  const started = startTimeOf(process.pid);
  const content = `${process.pid}\ntoken ${token}\n${started === undefined ? "" : `started ${started}\n`}`;
  writeFileSync(mine, content, { flag: "wx", mode: 0o644 });
  try {
    for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
      if (attempt > 0) pause(2 ** Math.min(attempt, 6));
      const outcome = take(path, mine, token, 0);
      if (outcome === LOST) continue;
      if (outcome !== TAKEN) {
        throw new StartupError(
          outcome.pid === undefined
            ? `the data directory ${dir} is in use by another agentstore process (its ${LOCK_FILE} has no pid yet); ` +
                "stop it, or give this one another AGENTSTORE_DATA_DIR"
            : `the data directory ${dir} is in use by another agentstore process (pid ${outcome.pid}); ` +
                "stop it, or give this one another AGENTSTORE_DATA_DIR",
        );
      }
      sweep(dir);
      let released = false;
      return () => {
        if (released) return;
        released = true;
        removeIfMine(path, token);
      };
    }
  } finally {
    rmSync(mine, { force: true });
  }
  throw new StartupError(`could not lock the data directory ${dir}: another process keeps taking it`);
}

const TAKEN = "taken";
const LOST = "lost";
type Outcome = typeof TAKEN | typeof LOST | { held: true; pid: number | undefined };

interface LockFile {
  /** The token, or for a file an older version wrote, its inode: never the same for two files at one name. */
  readonly identity: string;
  readonly pid: number | undefined;
  readonly token: string | undefined;
  readonly started: string | undefined;
  readonly ageMs: number;
}

/**
 * Tries to make `target` a name of `mine`. Replacing a stale file is where two contenders could
 * both win (both remove it, one removes the other's fresh lock), so the right to replace that one
 * file is itself a lock, on a name derived from the file's identity, taken the same way. Once it
 * is ours, the stale file can only leave `target` through us: its owner is dead and every other
 * contender lacks the claim. A claim whose owner died is stale in turn, hence the recursion.
 */
function take(target: string, mine: string, token: string, depth: number): Outcome {
  try {
    linkSync(mine, target);
    return TAKEN;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
  }
  const found = inspect(target);
  if (found === undefined) return LOST;
  if (!isStale(found)) return { held: true, pid: found.pid };
  if (depth >= MAX_CLAIM_DEPTH) return LOST;
  const claim = `${target}.break-${found.identity}`;
  if (take(claim, mine, token, depth + 1) !== TAKEN) return LOST;
  // Our view of `target` may be old: another contender may have replaced it before we claimed.
  if (inspect(target)?.identity !== found.identity) {
    removeIfMine(claim, token);
    return LOST;
  }
  renameSync(claim, target);
  return TAKEN;
}

/** Reads a lock (or claim, or temporary) file; undefined when it is gone. */
function inspect(path: string): LockFile | undefined {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw err;
  }
  try {
    // Through one descriptor, so that the inode and the text are of the same file.
    const stat = fstatSync(fd, { bigint: true });
    const [first = "", ...rest] = readFileSync(fd, "utf8").split("\n");
    const pid = /^\d+$/.test(first.trim()) ? Number(first.trim()) : undefined;
    const fields = new Map(
      rest.map((line) => [line.slice(0, line.indexOf(" ")), line.slice(line.indexOf(" ") + 1)]),
    );
    const token = fields.get("token");
    return {
      identity: token ?? `inode-${stat.ino}`,
      pid: pid !== undefined && Number.isSafeInteger(pid) && pid > 0 ? pid : undefined,
      token,
      started: fields.get("started"),
      ageMs: Date.now() - Number(stat.mtimeMs),
    };
  } finally {
    closeSync(fd);
  }
}

function isStale(lock: LockFile): boolean {
  if (lock.pid === undefined) return lock.ageMs >= UNWRITTEN_GRACE_MS;
  // Our own pid is a previous process that had it (pid 1 in a container, every time).
  if (lock.pid === process.pid) return true;
  return !isAlive(lock.pid, lock.started);
}

function isAlive(pid: number, started: string | undefined): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    // EPERM: it exists but belongs to someone else, so it is alive.
    if ((err as NodeJS.ErrnoException).code !== "EPERM") return false;
  }
  // A dead owner's pid can be reused by an unrelated process; its start time tells them apart.
  const now = started === undefined ? undefined : startTimeOf(pid);
  return now === undefined || now === started;
}

/** Linux's start time of a process, in clock ticks since boot; undefined elsewhere. */
function startTimeOf(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // The command name (field 2) may hold spaces and parentheses; the fields after it do not.
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
  } catch {
    return undefined;
  }
}

/**
 * Nobody else replaces a file of ours while we are alive, so checking that it is ours and then
 * removing it is not a race.
 */
function removeIfMine(path: string, token: string): void {
  try {
    if (inspect(path)?.token === token) rmSync(path, { force: true });
  } catch {
    // Releasing must not hide the error of the close it runs in; a file left behind is stale.
  }
}

/** Temporary files and claims of processes that died mid-takeover; harmless, but litter. */
function sweep(dir: string): void {
  for (const name of readdirSync(dir)) {
    if (!name.startsWith(`${LOCK_FILE}.`)) continue;
    try {
      const found = inspect(join(dir, name));
      if (found !== undefined && isStale(found)) rmSync(join(dir, name), { force: true });
    } catch {
      // Someone else's file we cannot read is not ours to remove.
    }
  }
}

function pause(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}
