/**
 * Start-up benchmark of the embedded default: how long `make run` takes to SERVING with an existing
 * data directory, the server's idle and peak RSS, and the latency of the first calls on a fresh
 * process. Each checkout given is measured in the same run, interleaved, so that the machine's load
 * affects them alike.
 *
 *   npm run bench:startup                                  # this checkout
 *   npm run bench:startup -- --root /tmp/before --root .   # before / after, side by side
 *   npm run bench:startup -- --reps 7
 *
 * Prints a Markdown table and writes it to bench/results/startup.md.
 */
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { cpus, tmpdir, totalmem } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { createClient } from "../src/client/index.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const { values: args } = parseArgs({
  options: {
    root: { type: "string", multiple: true, default: [ROOT] },
    reps: { type: "string", default: "5" },
    "idle-ms": { type: "string", default: "3000" },
  },
});
const REPS = Number(args.reps);
const IDLE_MS = Number(args["idle-ms"]);

interface Sample {
  servingMs: number;
  firstCallMs: number;
  secondCallMs: number;
  /** StreamRunEvents opened on the fresh process: call start to its first (stored) event. */
  firstStreamMs: number;
  /** WatchRuns opened on the fresh process: call start to its first change. */
  firstWatchMs: number;
  idleRssMb: number;
  peakRssMb: number;
}

const rssOf = (pid: number, field: "VmRSS" | "VmHWM") =>
  Number(readFileSync(`/proc/${pid}/status`, "utf8").match(new RegExp(`${field}:\\s+(\\d+)`))?.[1] ?? 0) /
  1024;

/** `make run` in a checkout (the README's command), on an existing data directory. */
async function once(root: string, dataDir: string): Promise<Sample> {
  const started = performance.now();
  const child = spawn("make", ["-s", "run"], {
    cwd: root,
    env: {
      PATH: `${join(root, "node_modules/.bin")}:${process.env.PATH ?? ""}`,
      HOME: process.env.HOME ?? "/root",
      AGENTSTORE_LISTEN: "127.0.0.1:0",
      AGENTSTORE_DATA_DIR: dataDir,
      AGENTSTORE_LOG_LEVEL: "info",
    },
    stdio: ["ignore", "pipe", "inherit"],
  });
  let out = "";
  const [port, serverPid] = await new Promise<[number, number]>((resolvePort, reject) => {
    child.stdout?.on("data", (chunk) => {
      out += chunk;
      const line = out.split("\n").find((l) => l.includes('"msg":"agentstore serving"'));
      if (line !== undefined) {
        const logged = JSON.parse(line) as { port: number; pid?: number };
        resolvePort([logged.port, logged.pid ?? serverProcessUnder(child.pid ?? 0)]);
      }
    });
    child.once("exit", (code) => reject(new Error(`server exited ${code}: ${out}`)));
  });
  const servingMs = performance.now() - started;
  const client = createClient({ baseUrl: `http://127.0.0.1:${port}` });
  try {
    let t = performance.now();
    const { run } = await client.runs.createRun({ run: { metadata: { first: true } } });
    const firstCallMs = performance.now() - t;
    t = performance.now();
    await client.runs.appendRunEvents({
      runId: run?.runId ?? "",
      events: [{ type: "diff", payload: { a: 1 } }],
    });
    const secondCallMs = performance.now() - t;
    t = performance.now();
    const stream = new AbortController();
    for await (const _ of client.runs.streamRunEvents(
      { runId: run?.runId ?? "" },
      { signal: stream.signal },
    )) {
      break;
    }
    const firstStreamMs = performance.now() - t;
    stream.abort();
    t = performance.now();
    const watch = new AbortController();
    let firstWatchMs = Number.NaN;
    try {
      for await (const _ of client.runs.watchRuns({ afterVersion: 0n }, { signal: watch.signal })) break;
      firstWatchMs = performance.now() - t;
    } catch {
      // A checkout from before WatchRuns: nothing to measure.
    }
    watch.abort();
    await new Promise((r) => setTimeout(r, IDLE_MS));
    return {
      servingMs,
      firstCallMs,
      secondCallMs,
      firstStreamMs,
      firstWatchMs,
      idleRssMb: rssOf(serverPid, "VmRSS"),
      peakRssMb: rssOf(serverPid, "VmHWM"),
    };
  } finally {
    client.close();
    // The server itself, not npm: npm does not pass a signal on to the script it runs.
    await new Promise<void>((done) => {
      child.once("exit", () => done());
      process.kill(serverPid, "SIGTERM");
    });
  }
}

/** The `node src/main.ts` process among the descendants of `root` (for checkouts that log no pid). */
function serverProcessUnder(root: number): number {
  const parents = new Map<number, number>();
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      parents.set(Number(entry), Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]));
    } catch {
      // The process ended meanwhile.
    }
  }
  for (const [pid] of parents) {
    let up = pid;
    while (up > 1 && up !== root) up = parents.get(up) ?? 0;
    // The node process itself, not the `sh -c` that npm runs it under.
    const argv = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\u0000");
    if (up === root && (argv[0] ?? "").endsWith("node") && argv.includes("src/main.ts")) return pid;
  }
  return root;
}

const median = (values: number[]) => {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? Number.NaN;
};

const roots = (args.root ?? [ROOT]).map((r) => resolve(r));
const dirs = new Map(roots.map((r) => [r, mkdtempSync(join(tmpdir(), "agentstore-startup-"))]));
const samples = new Map<string, Sample[]>(roots.map((r) => [r, []]));
try {
  // The first start creates each data directory; it is not counted (the target is a restart).
  for (const root of roots) await once(root, join(dirs.get(root) ?? "", "data"));
  for (let rep = 0; rep < REPS; rep++) {
    for (const root of roots) samples.get(root)?.push(await once(root, join(dirs.get(root) ?? "", "data")));
  }
} finally {
  for (const dir of dirs.values()) rmSync(dir, { recursive: true, force: true });
}

const lines = [
  `### Embedded start-up — ${new Date().toISOString().slice(0, 10)}, ${cpus().length} cores, ${Math.round(totalmem() / 2 ** 30)} GiB, medians of ${REPS}`,
  "",
  "| checkout | start → SERVING ms | first call ms | second call ms | first stream's first event ms | first WatchRuns change ms | idle RSS MiB | peak RSS MiB |",
  "| --- | --- | --- | --- | --- | --- | --- | --- |",
];
for (const root of roots) {
  const s = samples.get(root) ?? [];
  const pick = (k: keyof Sample) => median(s.map((x) => x[k])).toFixed(0);
  lines.push(
    `| ${root === ROOT ? "this checkout" : root} | ${pick("servingMs")} | ${pick("firstCallMs")} | ${median(s.map((x) => x.secondCallMs)).toFixed(1)} | ${median(s.map((x) => x.firstStreamMs)).toFixed(1)} | ${median(s.map((x) => x.firstWatchMs)).toFixed(1)} | ${pick("idleRssMb")} | ${pick("peakRssMb")} |`,
  );
}
lines.push(
  "",
  "Existing data directory; started by `make run` (the README's command) of each checkout; RSS of the server process.",
  "",
);
const text = lines.join("\n");
console.log(text);
mkdirSync(join(ROOT, "bench/results"), { recursive: true });
writeFileSync(
  join(ROOT, "bench/results/startup.md"),
  `${text}\nCommand: npm run bench:startup -- ${process.argv.slice(2).join(" ")}\n`,
);
