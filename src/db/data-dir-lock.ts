import { closeSync, mkdirSync, openSync, readFileSync, rmSync, writeSync } from "node:fs";
import { join, resolve } from "node:path";
import { StartupError } from "../core/errors.ts";

const LOCK_FILE = "agentstore.lock";

/**
 * The embedded database is one process's files: a second process opening them would corrupt them
 * (PGlite has no locking of its own). The lock is a file created with O_EXCL that holds the
 * owner's pid. A lock left by a process that is gone (a kill -9, a power cut) is taken over.
 */
export function lockDataDir(dataDir: string): () => void {
  const dir = resolve(dataDir);
  mkdirSync(dir, { recursive: true });
  const path = join(dir, LOCK_FILE);
  for (let attempt = 0; attempt < 3; attempt++) {
    let fd: number;
    try {
      fd = openSync(path, "wx", 0o644);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      const holder = readHolder(path);
      if (holder !== undefined && holder !== process.pid && isAlive(holder)) {
        throw new StartupError(
          `the data directory ${dir} is in use by another agentstore process (pid ${holder}); ` +
            "stop it, or give this one another AGENTSTORE_DATA_DIR",
        );
      }
      // Stale: its owner is gone. Remove it and race for it again with O_EXCL.
      rmSync(path, { force: true });
      continue;
    }
    writeSync(fd, `${process.pid}\n`);
    closeSync(fd);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (readHolder(path) === process.pid) rmSync(path, { force: true });
    };
  }
  throw new StartupError(`could not lock the data directory ${dir}: another process keeps taking it`);
}

function readHolder(path: string): number | undefined {
  try {
    const pid = Number.parseInt(readFileSync(path, "utf8").trim(), 10);
    return Number.isSafeInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: it exists but belongs to someone else, so it is alive.
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}
