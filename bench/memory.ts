/**
 * Memory benchmark (issue 7): where the server's RSS goes while events are appended with no
 * reader, and what open StreamRunEvents streams cost.
 *
 *   npm run bench:memory                                     # both databases, ~4-5 min on 2 cores
 *   node bench/memory.ts --backend pglite --mb 50 --streams 2000
 *   node bench/memory.ts --backend postgres --skip-snapshots
 *
 * Per database, the server runs as its own process (`node src/main.ts`) on a fresh database, three
 * times:
 *   - as `npm start` runs it (MALLOC_TRIM_THRESHOLD_=131072, --max-semi-space-size=4),
 *   - plainly (no flags, no malloc tuning), so that what the flags change is known,
 *   - as `npm start` plus --heapsnapshot-signal=SIGUSR2, for heap snapshots (idle, after the
 *     appends, with the streams open), kept apart so that a snapshot's own allocations never end
 *     up in the other figures.
 * Each measured run: idle RSS after start; `--mb` MB of ~16 KB events appended in batches of 64
 * over 20 runs, nobody reading; RSS right after and after `--idle-ms` of rest; then `--streams`
 * StreamRunEvents streams of one run over `--connections` client connections, RSS once all of them
 * hold the run's first event (per-stream cost = growth / streams), and the time from the start of
 * an AppendRunEvents call to the moment the last stream holds its event. RSS and VmHWM come from
 * /proc/<pid>/status, mapping sizes from /proc/<pid>/smaps. Client and server share the machine.
 *
 * Heap snapshots are parsed here (node_fields / nodes / edges / strings) without loading them as
 * one JSON value: self sizes summed per constructor, the live JS heap beside native memory the
 * snapshot can see (ArrayBuffer backing stores, WebAssembly.Memory), beside RSS.
 *
 * Prints Markdown and writes it to bench/results/memory.md (see --out).
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { cpus, tmpdir, totalmem } from "node:os";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { parseArgs } from "node:util";
import { type AgentStoreClient, createClient, RunStatus } from "../src/client/index.ts";
import { type BenchBackend, benchDatabase, latency, percentile, postgresReachable, ROOT } from "./server.ts";

const USAGE = `node bench/memory.ts [options]
  --backend B          pglite, postgres or both (both)
  --mb N               MB of event payloads appended with no reader (50)
  --streams N          StreamRunEvents streams of one run (2000)
  --connections N      client connections the streams share (8)
  --runs N             runs the appended events are spread over (20)
  --batch N            events per AppendRunEvents (64)
  --payload-kb N       approximate JSON size of one event payload, KiB (16)
  --appends N          appends timed while the streams are open (20)
  --idle-ms N          rest after the appends before RSS is read again (5000)
  --skip-snapshots     no heap-snapshot server
  --skip-plain         no server without npm start's flags
  --out FILE           Markdown result file (bench/results/memory.md)`;

const { values: args } = parseArgs({
  options: {
    backend: { type: "string", default: "both" },
    mb: { type: "string", default: "50" },
    streams: { type: "string", default: "2000" },
    connections: { type: "string", default: "8" },
    runs: { type: "string", default: "20" },
    batch: { type: "string", default: "64" },
    "payload-kb": { type: "string", default: "16" },
    appends: { type: "string", default: "20" },
    "idle-ms": { type: "string", default: "5000" },
    "skip-snapshots": { type: "boolean", default: false },
    "skip-plain": { type: "boolean", default: false },
    out: { type: "string", default: "bench/results/memory.md" },
    help: { type: "boolean", default: false },
  },
});
if (args.help) {
  console.log(USAGE);
  process.exit(0);
}
function flag(name: keyof typeof args): number {
  const value = Number(args[name]);
  if (!(value > 0) || !Number.isFinite(value)) {
    console.error(`--${name} must be a positive number\n\n${USAGE}`);
    process.exit(2);
  }
  return value;
}
const MB = flag("mb");
const STREAMS = Math.round(flag("streams"));
const CONNECTIONS = Math.round(flag("connections"));
const RUNS = Math.round(flag("runs"));
const BATCH = Math.round(flag("batch"));
const PAYLOAD_BYTES = Math.round(flag("payload-kb") * 1024);
const APPENDS = Math.round(flag("appends"));
const IDLE_MS = flag("idle-ms");
const OUT = resolve(ROOT, args.out ?? "bench/results/memory.md");
const BACKENDS: BenchBackend[] =
  args.backend === "both" ? ["pglite", "postgres"] : [args.backend as BenchBackend];
if (!BACKENDS.every((b) => b === "pglite" || b === "postgres")) {
  console.error(`--backend must be pglite, postgres or both\n\n${USAGE}`);
  process.exit(2);
}
/** The server's default limit; raised only when more streams are asked for. */
const DEFAULT_MAX_STREAMS = 2000;

// ---------------------------------------------------------------------------------------------
// The server process

type Variant = "npm-start" | "plain" | "snapshot";
const VARIANT_LABEL: Record<Variant, string> = {
  "npm-start": "npm start flags (MALLOC_TRIM_THRESHOLD_=131072, --max-semi-space-size=4)",
  plain: "plain `node src/main.ts`",
  snapshot: "npm start flags + --heapsnapshot-signal=SIGUSR2",
};

interface Server {
  url: string;
  pid: number;
  child: ChildProcess;
  snapshotDir?: string;
  /** The inspector's WebSocket (snapshot server only), for process.memoryUsage(). */
  inspectorUrl?: string;
  stop(): Promise<void>;
}

const children = new Set<ChildProcess>();
process.once("SIGINT", () => {
  for (const child of children) child.kill("SIGTERM");
  process.exit(130);
});

async function spawnServer(dbEnv: Record<string, string>, variant: Variant): Promise<Server> {
  const nodeFlags: string[] = [];
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? "",
    AGENTSTORE_LISTEN: "127.0.0.1:0",
    AGENTSTORE_LOG_LEVEL: "info",
    ...dbEnv,
  };
  if (STREAMS > DEFAULT_MAX_STREAMS) env.AGENTSTORE_MAX_STREAMS_PER_TENANT = String(STREAMS);
  let snapshotDir: string | undefined;
  if (variant !== "plain") {
    env.MALLOC_TRIM_THRESHOLD_ = "131072";
    nodeFlags.push("--max-semi-space-size=4");
  }
  if (variant === "snapshot") {
    snapshotDir = mkdtempSync(join(tmpdir(), "agentstore-heap-"));
    // The inspector answers process.memoryUsage() from inside the server: V8's heap committed and
    // used, external memory, ArrayBuffers.
    nodeFlags.push(
      "--heapsnapshot-signal=SIGUSR2",
      `--diagnostic-dir=${snapshotDir}`,
      "--inspect=127.0.0.1:0",
    );
  }
  const child = spawn(process.execPath, [...nodeFlags, "src/main.ts"], {
    cwd: ROOT,
    env,
    stdio: ["ignore", "pipe", variant === "snapshot" ? "pipe" : "inherit"],
  });
  children.add(child);
  let inspectorUrl: string | undefined;
  child.stderr?.on("data", (chunk: Buffer) => {
    const text = String(chunk);
    inspectorUrl ??= /ws:\/\/\S+/.exec(text)?.[0];
    const rest = text
      .split("\n")
      .filter(
        (l) => l && !/Debugger (listening|attached|ending)|For help, see|Waiting for the debugger/.test(l),
      );
    if (rest.length > 0) process.stderr.write(`${rest.join("\n")}\n`);
  });
  child.once("exit", () => children.delete(child));
  let out = "";
  // Keep draining stdout after start: a full pipe would block the server's writes.
  child.stdout?.on("data", () => {});
  const port = await new Promise<number>((resolvePort, reject) => {
    const onData = (chunk: Buffer) => {
      out += chunk;
      const m = /"port":(\d+).*"msg":"agentstore serving"/.exec(out);
      if (m) {
        out = "";
        child.stdout?.off("data", onData);
        resolvePort(Number(m[1]));
      }
    };
    child.stdout?.on("data", onData);
    child.once("exit", (code) => reject(new Error(`server exited ${code}: ${out}`)));
  });
  return {
    url: `http://127.0.0.1:${port}`,
    pid: child.pid ?? 0,
    child,
    snapshotDir,
    get inspectorUrl() {
      return inspectorUrl;
    },
    stop: () =>
      new Promise<void>((done) => {
        if (snapshotDir) rmSync(snapshotDir, { recursive: true, force: true });
        if (child.exitCode !== null || child.signalCode !== null) return done();
        child.once("exit", () => done());
        child.kill("SIGTERM");
      }),
  };
}

// ---------------------------------------------------------------------------------------------
// /proc

const MiB = 2 ** 20;
const mib = (bytes: number) => (bytes / MiB).toFixed(0);
const mib1 = (bytes: number) => (bytes / MiB).toFixed(1);

interface Rss {
  rss: number;
  hwm: number;
}
function rssOf(pid: number): Rss {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (field: string) => Number(new RegExp(`${field}:\\s+(\\d+)`).exec(status)?.[1] ?? Number.NaN);
  return { rss: kb("VmRSS") * 1024, hwm: kb("VmHWM") * 1024 };
}

/** RSS by kind of mapping: malloc's brk heap, WebAssembly memories, other anonymous, files. */
interface Mappings {
  brkHeap: number;
  /** Accessible part of each WebAssembly memory: its mapped size and RSS. */
  wasm: { count: number; size: number; rss: number };
  otherAnon: number;
  files: number;
}
function mappingsOf(pid: number): Mappings {
  interface Vma {
    start: bigint;
    end: bigint;
    perms: string;
    name: string;
    size: number;
    rss: number;
  }
  const vmas: Vma[] = [];
  for (const line of readFileSync(`/proc/${pid}/smaps`, "utf8").split("\n")) {
    const header = /^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \d+\s*(.*)$/.exec(line);
    if (header) {
      vmas.push({
        start: BigInt(`0x${header[1]}`),
        end: BigInt(`0x${header[2]}`),
        perms: header[3] ?? "",
        name: header[4] ?? "",
        size: 0,
        rss: 0,
      });
      continue;
    }
    const field = /^(Size|Rss):\s+(\d+) kB/.exec(line);
    const vma = vmas.at(-1);
    if (!field || !vma) continue;
    if (field[1] === "Size") vma.size = Number(field[2]) * 1024;
    else vma.rss = Number(field[2]) * 1024;
  }
  // V8 reserves 8 GiB and more of address space per 32-bit WebAssembly memory (bounds checks by
  // guard pages) and makes its first bytes accessible: an anonymous read-write mapping directly in
  // front of a PROT_NONE one of at least 4 GiB. Nothing else in this process maps that much.
  const wasm = new Set<Vma>();
  for (const [i, vma] of vmas.entries()) {
    const before = vmas[i - 1];
    if (vma.name === "" && vma.perms.startsWith("---") && vma.size >= 4 * 2 ** 30 && before) {
      if (before.name === "" && before.perms.startsWith("rw") && before.end === vma.start) wasm.add(before);
    }
  }
  const result: Mappings = { brkHeap: 0, wasm: { count: 0, size: 0, rss: 0 }, otherAnon: 0, files: 0 };
  for (const vma of vmas) {
    if (wasm.has(vma)) {
      result.wasm.count++;
      result.wasm.size += vma.size;
      result.wasm.rss += vma.rss;
    } else if (vma.name === "[heap]") result.brkHeap += vma.rss;
    else if (vma.name.startsWith("/")) result.files += vma.rss;
    else result.otherAnon += vma.rss;
  }
  return result;
}

// ---------------------------------------------------------------------------------------------
// Heap snapshots

interface Group {
  name: string;
  count: number;
  bytes: number;
}
interface SnapshotSummary {
  file: string;
  fileBytes: number;
  seconds: number;
  nodes: number;
  /** Self sizes of every V8 heap object (the live JS heap after the snapshot's GC). */
  jsHeap: number;
  /** Self sizes of native nodes: ArrayBuffer backing stores, Node's C++ objects that report a size. */
  native: number;
  arrayBufferData: { count: number; bytes: number; largest: number[] };
  wasmMemories: number[];
  /** Every group, largest first. */
  groups: Group[];
  topNative: Group[];
}

/** process.memoryUsage() and V8's malloced memory, read inside the server through its inspector. */
interface Usage {
  rss: number;
  heapTotal: number;
  heapUsed: number;
  external: number;
  arrayBuffers: number;
  malloced: number;
}
async function usageOf(server: Server): Promise<Usage | undefined> {
  if (!server.inspectorUrl) return undefined;
  const ws = new WebSocket(server.inspectorUrl);
  try {
    await new Promise((ok, fail) => {
      ws.addEventListener("open", ok, { once: true });
      ws.addEventListener("error", fail, { once: true });
    });
    const reply = new Promise<string>((ok) =>
      ws.addEventListener("message", (e) => {
        const msg = JSON.parse(String(e.data));
        if (msg.id === 1) ok(msg.result?.result?.value ?? "{}");
      }),
    );
    const expression = `JSON.stringify({ ...process.memoryUsage(),
      malloced: process.getBuiltinModule("node:v8").getHeapStatistics().malloced_memory })`;
    ws.send(
      JSON.stringify({ id: 1, method: "Runtime.evaluate", params: { expression, returnByValue: true } }),
    );
    return JSON.parse(await Promise.race([reply, sleep(30_000).then(() => "null")])) ?? undefined;
  } catch {
    return undefined;
  } finally {
    ws.close();
  }
}

/** SIGUSR2 to the server, then waits for a complete .heapsnapshot and summarises it. */
async function takeSnapshot(server: Server): Promise<SnapshotSummary> {
  const dir = server.snapshotDir ?? "";
  const before = new Set(readdirSync(dir));
  const started = performance.now();
  process.kill(server.pid, "SIGUSR2");
  let file = "";
  let lastSize = -1;
  let stableSince = 0;
  for (;;) {
    await sleep(250);
    if (performance.now() - started > 300_000) throw new Error("no heap snapshot after 300 s");
    file ||= readdirSync(dir).find((f) => f.endsWith(".heapsnapshot") && !before.has(f)) ?? "";
    if (!file) continue;
    const size = statSync(join(dir, file)).size;
    if (size !== lastSize) {
      lastSize = size;
      stableSince = performance.now();
      continue;
    }
    if (performance.now() - stableSince < 1000 || size < 2) continue;
    const tail = readFileSync(join(dir, file)).subarray(-2).toString();
    if (tail === "]}") break;
  }
  const seconds = (performance.now() - started) / 1000;
  const summary = parseSnapshot(join(dir, file));
  rmSync(join(dir, file), { force: true });
  return { ...summary, seconds };
}

function parseSnapshot(file: string): Omit<SnapshotSummary, "seconds"> {
  const buf = readFileSync(file);
  let pos = buf.indexOf('"nodes":[');
  const head = JSON.parse(`${buf.subarray(0, pos).toString("utf8").trimEnd().replace(/,$/, "")}}`);
  const meta = head.snapshot.meta;
  const nodeFields: string[] = meta.node_fields;
  const edgeFields: string[] = meta.edge_fields;
  const nodeTypes: string[] = meta.node_types[0];
  const nodeCount: number = head.snapshot.node_count;
  const edgeCount: number = head.snapshot.edge_count;
  /** Reads `count` non-negative integers of a JSON array from `pos` on. */
  const readInts = (count: number, into: (i: number, v: number) => void) => {
    let i = 0;
    let v = 0;
    let inNumber = false;
    while (i < count) {
      const c = buf[pos++] ?? 93;
      if (c >= 48 && c <= 57) {
        v = v * 10 + (c - 48);
        inNumber = true;
      } else if (inNumber) {
        into(i++, v);
        v = 0;
        inNumber = false;
      } else if (c === 93) throw new Error("heap snapshot: array shorter than its count");
    }
  };
  const N = nodeFields.length;
  const [fType, fName, fSize, fEdges] = ["type", "name", "self_size", "edge_count"].map((f) =>
    nodeFields.indexOf(f),
  );
  const nType = new Uint8Array(nodeCount);
  const nName = new Uint32Array(nodeCount);
  const nSize = new Float64Array(nodeCount);
  const nEdges = new Uint32Array(nodeCount);
  pos += '"nodes":['.length;
  readInts(nodeCount * N, (i, v) => {
    const n = (i / N) | 0;
    const f = i - n * N;
    if (f === fType) nType[n] = v;
    else if (f === fName) nName[n] = v;
    else if (f === fSize) nSize[n] = v;
    else if (f === fEdges) nEdges[n] = v;
  });
  const E = edgeFields.length;
  const fTo = edgeFields.indexOf("to_node");
  const eTo = new Uint32Array(edgeCount);
  pos = buf.indexOf('"edges":[', pos) + '"edges":['.length;
  readInts(edgeCount * E, (i, v) => {
    if (i % E === fTo) eTo[(i / E) | 0] = v / N;
  });
  // Strings: names are short; long string values are cut (only their first characters are shown).
  pos = buf.indexOf('"strings":[', pos) + '"strings":['.length;
  const strings: string[] = [];
  for (;;) {
    while (buf[pos] !== 34 && buf[pos] !== 93) pos++;
    if (buf[pos] === 93) break;
    const start = pos++;
    while (buf[pos] !== 34) pos += buf[pos] === 92 ? 2 : 1;
    pos++;
    const raw = buf.subarray(start, Math.min(pos, start + 200)).toString("utf8");
    strings.push(pos - start <= 200 ? JSON.parse(raw) : raw.slice(1).replace(/\\.?$/, ""));
  }
  const typeOf = (n: number) => nodeTypes[nType[n] ?? 0] ?? "?";
  const nameOf = (n: number) => strings[nName[n] ?? 0] ?? "?";
  const firstEdge = new Uint32Array(nodeCount + 1);
  for (let n = 0; n < nodeCount; n++) firstEdge[n + 1] = (firstEdge[n] ?? 0) + (nEdges[n] ?? 0);
  const edgesOf = (n: number) => eTo.subarray(firstEdge[n], firstEdge[n + 1]);

  const groups = new Map<string, { count: number; bytes: number }>();
  const nativeGroups = new Map<string, { count: number; bytes: number }>();
  let jsHeap = 0;
  let native = 0;
  const bufferData: number[] = [];
  const wasmMemories: number[] = [];
  for (let n = 0; n < nodeCount; n++) {
    const type = typeOf(n);
    const size = nSize[n] ?? 0;
    let key: string;
    if (type === "native") {
      native += size;
      const name = nameOf(n);
      if (name === "system / JSArrayBufferData") bufferData.push(size);
      const group = nativeGroups.get(name) ?? { count: 0, bytes: 0 };
      group.count++;
      group.bytes += size;
      nativeGroups.set(name, group);
      continue;
    }
    jsHeap += size;
    if (type === "object") key = nameOf(n);
    else if (type === "string" || type === "concatenated string" || type === "sliced string")
      key = "(string)";
    else key = `(${type})`;
    const group = groups.get(key) ?? { count: 0, bytes: 0 };
    group.count++;
    group.bytes += size;
    groups.set(key, group);
    // A WebAssembly.Memory instance: its prototype is the object named "WebAssembly.Memory", its
    // ArrayBuffer's backing store is the memory itself.
    if (type === "object" && nameOf(n) === "Memory") {
      const out = edgesOf(n);
      if (![...out].some((t) => typeOf(t) === "object" && nameOf(t) === "WebAssembly.Memory")) continue;
      for (const t of out) {
        if (nameOf(t) !== "ArrayBuffer") continue;
        for (const d of edgesOf(t)) {
          if (nameOf(d) === "system / JSArrayBufferData") wasmMemories.push(nSize[d] ?? 0);
        }
      }
    }
  }
  const sorted = (m: Map<string, { count: number; bytes: number }>) =>
    [...m].map(([name, g]) => ({ name, ...g })).sort((a, b) => b.bytes - a.bytes);
  bufferData.sort((a, b) => b - a);
  return {
    file,
    fileBytes: buf.length,
    nodes: nodeCount,
    jsHeap,
    native,
    arrayBufferData: {
      count: bufferData.length,
      bytes: bufferData.reduce((a, b) => a + b, 0),
      largest: bufferData.slice(0, 3),
    },
    wasmMemories,
    groups: sorted(groups),
    topNative: sorted(nativeGroups).slice(0, 5),
  };
}

// ---------------------------------------------------------------------------------------------
// The workload

interface Phase {
  label: string;
  rss: Rss;
  maps: Mappings;
}

interface StreamFigures {
  openSeconds: number;
  before: Rss;
  live: Rss;
  liveLater: Rss;
  delivery: number[];
  afterClose: Rss;
}

interface Measured {
  backend: BenchBackend;
  variant: Variant;
  phases: Phase[];
  appendSeconds: number;
  appendedBytes: number;
  events: number;
  calls: number;
  peakDuringAppends: number;
  streams?: StreamFigures;
  snapshots: Snapshot[];
}

interface Snapshot {
  label: string;
  /** Read just before the snapshot. */
  rssBefore: Rss;
  maps: Mappings;
  usage: Usage | undefined;
  rssAfter: Rss;
  /** Absent for a probe without a snapshot. */
  summary?: SnapshotSummary;
}
/** memoryUsage, RSS and mappings, then a heap snapshot unless `take` is false. */
async function snapshot(server: Server, label: string, take = true): Promise<Snapshot> {
  const usage = await usageOf(server);
  const rssBefore = rssOf(server.pid);
  const maps = mappingsOf(server.pid);
  const summary = take ? await takeSnapshot(server) : undefined;
  return { label, rssBefore, maps, usage, rssAfter: rssOf(server.pid), summary };
}

const phase = (pid: number, label: string): Phase => ({ label, rss: rssOf(pid), maps: mappingsOf(pid) });

async function newRun(client: AgentStoreClient): Promise<string> {
  const runId = (await client.runs.createRun({ run: {} })).run?.runId;
  if (!runId) throw new Error("CreateRun returned no run");
  return runId;
}

/** `--mb` MB of ~PAYLOAD_BYTES payloads, BATCH per call, calls spread over RUNS runs, nobody reading. */
async function appendWithoutReaders(client: AgentStoreClient, pid: number) {
  const runIds: string[] = [];
  for (let r = 0; r < RUNS; r++) runIds.push(await newRun(client));
  const target = MB * MiB;
  // Base64 of random bytes: text that neither PostgreSQL's TOAST compression nor anything else shrinks.
  const textChars = PAYLOAD_BYTES - 40;
  let events = 0;
  let bytes = 0;
  let calls = 0;
  let peak = 0;
  const sampler = setInterval(() => {
    peak = Math.max(peak, rssOf(pid).rss);
  }, 100);
  const started = performance.now();
  try {
    for (let call = 0; bytes < target; call++) {
      const batch = Array.from({ length: BATCH }, () => {
        const text = randomBytes(Math.ceil((textChars * 3) / 4))
          .toString("base64")
          .slice(0, textChars);
        events++;
        return { type: "assistant_message", payload: { i: events, text } };
      });
      bytes += batch.reduce((sum, e) => sum + JSON.stringify(e.payload).length, 0);
      await client.runs.appendRunEvents({ runId: runIds[call % RUNS] ?? "", events: batch });
      calls++;
    }
  } finally {
    clearInterval(sampler);
  }
  return { seconds: (performance.now() - started) / 1000, bytes, events, calls, peak };
}

/**
 * STREAMS streams of one fresh run over CONNECTIONS connections. A stream is live once it holds
 * the run's first event (appended before the streams open, so each stream's first read sends it).
 */
interface StreamHooks {
  /** Once every stream is live. */
  live?: () => Promise<void>;
  /** After the timed appends, the streams still open. */
  appended?: () => Promise<void>;
  /** After the streams closed and IDLE_MS of rest. */
  closed?: () => Promise<void>;
}
async function openStreams(url: string, pid: number, hooks: StreamHooks = {}): Promise<StreamFigures> {
  // With hooks, a heap snapshot stops the server for many seconds: no keepalive PING must time out then.
  const pingIntervalMs = hooks.appended ? 600_000 : undefined;
  const clients = Array.from({ length: CONNECTIONS }, () => createClient({ baseUrl: url, pingIntervalMs }));
  const runId = await newRun(clients[0] as AgentStoreClient);
  await clients[0]?.runs.appendRunEvents({
    runId,
    events: [{ type: "assistant_message", payload: { seq: 1 } }],
  });
  const before = rssOf(pid);
  const held = new Map<number, number>();
  const sentAt = new Map<number, number>();
  const doneAt = new Map<number, number>();
  const abort = new AbortController();
  const started = performance.now();
  const follows = Array.from({ length: STREAMS }, async (_, s) => {
    const client = clients[s % CONNECTIONS] as AgentStoreClient;
    for await (const { event } of client.runs.streamRunEvents({ runId }, { signal: abort.signal })) {
      if (!event || event.type === "terminal_status") continue;
      const seq = Number(event.seq);
      const count = (held.get(seq) ?? 0) + 1;
      held.set(seq, count);
      if (count === STREAMS) doneAt.set(seq, performance.now());
    }
  });
  let failure: unknown;
  const failed = Promise.all(follows).catch((err) => {
    failure = err;
  });
  const deadline = performance.now() + 180_000;
  while (!doneAt.has(1)) {
    if (failure !== undefined) throw failure;
    if (performance.now() > deadline) throw new Error(`only ${held.get(1) ?? 0} of ${STREAMS} streams live`);
    await sleep(20);
  }
  const openSeconds = (performance.now() - started) / 1000;
  await sleep(1000);
  const live = rssOf(pid);
  await hooks.live?.();
  const delivery: number[] = [];
  for (let k = 0; k < APPENDS; k++) {
    const seq = k + 2;
    sentAt.set(seq, performance.now());
    await clients[k % CONNECTIONS]?.runs.appendRunEvents({
      runId,
      events: [{ type: "assistant_message", payload: { seq } }],
    });
    while (!doneAt.has(seq)) {
      if (failure !== undefined) throw failure;
      await sleep(1);
    }
    delivery.push((doneAt.get(seq) ?? 0) - (sentAt.get(seq) ?? 0));
  }
  const liveLater = rssOf(pid);
  await hooks.appended?.();
  await clients[0]?.runs.finishRun({ runId, status: RunStatus.COMPLETED });
  await Promise.race([failed, sleep(60_000)]);
  abort.abort();
  for (const client of clients) client.close();
  await sleep(IDLE_MS);
  const afterClose = rssOf(pid);
  await hooks.closed?.();
  return { openSeconds, before, live, liveLater, delivery, afterClose };
}

async function measure(backend: BenchBackend, variant: Variant): Promise<Measured> {
  const snapshots: Measured["snapshots"] = [];
  if (variant === "snapshot") {
    // The idle snapshot from a process of its own: a snapshot leaves memory behind in the process.
    const database = await benchDatabase(backend, "memory");
    const server = await spawnServer(database.env, variant);
    try {
      await sleep(IDLE_MS);
      snapshots.push(await snapshot(server, "idle after start (own process)"));
    } finally {
      await server.stop();
      await database.drop();
    }
  }
  const database = await benchDatabase(backend, "memory");
  const server = await spawnServer(database.env, variant);
  const client = createClient({ baseUrl: server.url });
  const result: Measured = {
    backend,
    variant,
    phases: [],
    appendSeconds: 0,
    appendedBytes: 0,
    events: 0,
    calls: 0,
    peakDuringAppends: 0,
    snapshots,
  };
  const snap = async (label: string, take = true) => {
    result.snapshots.push(await snapshot(server, label, take));
  };
  try {
    await sleep(IDLE_MS);
    result.phases.push(phase(server.pid, "idle after start"));
    const appended = await appendWithoutReaders(client, server.pid);
    result.phases.push(phase(server.pid, `right after ${MB} MB appended`));
    Object.assign(result, {
      appendSeconds: appended.seconds,
      appendedBytes: appended.bytes,
      events: appended.events,
      calls: appended.calls,
      peakDuringAppends: appended.peak,
    });
    await sleep(IDLE_MS);
    result.phases.push(phase(server.pid, `${IDLE_MS / 1000} s later`));
    if (variant === "snapshot") {
      await snap(`after ${MB} MB appended`);
      await openStreams(server.url, server.pid, {
        live: () => snap(`${STREAMS} streams live (no snapshot)`, false),
        appended: () => snap(`${STREAMS} streams live, after ${APPENDS} appends`),
        closed: () => snap(`streams closed, ${IDLE_MS / 1000} s later (no snapshot)`, false),
      });
    } else {
      result.streams = await openStreams(server.url, server.pid);
      result.phases.push(phase(server.pid, `${STREAMS} streams closed, ${IDLE_MS / 1000} s later`));
    }
    return result;
  } finally {
    client.close();
    await server.stop();
    await database.drop();
  }
}

// ---------------------------------------------------------------------------------------------
// Report

function report(results: Measured[], header: string[]): string {
  const lines = [...header];
  for (const backend of BACKENDS) {
    const mine = results.filter((r) => r.backend === backend);
    if (mine.length === 0) continue;
    lines.push(`## ${backend}`, "");
    const runs = mine.filter((r) => r.variant !== "snapshot");
    lines.push(
      "### RSS (MiB, /proc/<pid>/status)",
      "",
      `| phase | ${runs.map((r) => VARIANT_LABEL[r.variant]).join(" | ")} |`,
      `| --- | ${runs.map(() => "---").join(" | ")} |`,
    );
    const labels = runs[0]?.phases.map((p) => p.label) ?? [];
    for (const [i, label] of labels.entries()) {
      lines.push(
        `| ${label} | ${runs.map((r) => `${mib(r.phases[i]?.rss.rss ?? Number.NaN)} (HWM ${mib(r.phases[i]?.rss.hwm ?? Number.NaN)})`).join(" | ")} |`,
      );
    }
    lines.push(
      `| peak sampled every 100 ms while appending | ${runs.map((r) => mib(r.peakDuringAppends)).join(" | ")} |`,
      `| appends: events, calls, payload MB, seconds | ${runs.map((r) => `${r.events}, ${r.calls}, ${mib1(r.appendedBytes)}, ${r.appendSeconds.toFixed(1)} s`).join(" | ")} |`,
    );
    lines.push(
      "",
      `### ${STREAMS} StreamRunEvents streams of one run, ${CONNECTIONS} client connections`,
      "",
      `| measurement | ${runs.map((r) => VARIANT_LABEL[r.variant]).join(" | ")} |`,
      `| --- | ${runs.map(() => "---").join(" | ")} |`,
    );
    const s = (f: (x: StreamFigures) => string) =>
      runs.map((r) => (r.streams ? f(r.streams) : "")).join(" | ");
    lines.push(
      `| seconds until every stream held event 1 | ${s((x) => x.openSeconds.toFixed(1))} |`,
      `| RSS before opening, MiB | ${s((x) => mib(x.before.rss))} |`,
      `| RSS 1 s after all live, MiB | ${s((x) => mib(x.live.rss))} |`,
      `| **per stream**, KiB ((live − before) / ${STREAMS}) | ${s((x) => ((x.live.rss - x.before.rss) / STREAMS / 1024).toFixed(1))} |`,
      `| RSS after the ${APPENDS} timed appends, MiB | ${s((x) => mib(x.liveLater.rss))} |`,
      `| append start → last of ${STREAMS} streams holds it (${APPENDS} appends) | ${s((x) => latency(x.delivery))} |`,
      `| ... min / max ms | ${s((x) => {
        const sorted = [...x.delivery].sort((a, b) => a - b);
        return `${percentile(sorted, 0).toFixed(1)} / ${(sorted.at(-1) ?? Number.NaN).toFixed(1)}`;
      })} |`,
      `| RSS ${IDLE_MS / 1000} s after the streams closed, MiB (HWM) | ${s((x) => `${mib(x.afterClose.rss)} (${mib(x.afterClose.hwm)})`)} |`,
    );
    lines.push(
      "",
      "### Mappings (MiB of RSS, /proc/<pid>/smaps)",
      "",
      "| server, phase | RSS | malloc brk heap | WebAssembly memories: RSS of mapped (count) | other anonymous (V8 heap, mmap'd malloc, stacks) | files |",
      "| --- | --- | --- | --- | --- | --- |",
    );
    for (const r of runs) {
      for (const p of r.phases) {
        const w = p.maps.wasm;
        lines.push(
          `| ${r.variant}, ${p.label} | ${mib(p.rss.rss)} | ${mib(p.maps.brkHeap)} | ${w.count ? `${mib(w.rss)} of ${mib(w.size)} (${w.count})` : "none"} | ${mib(p.maps.otherAnon)} | ${mib(p.maps.files)} |`,
        );
      }
    }
    const snapRun = mine.find((r) => r.variant === "snapshot");
    if (snapRun && snapRun.snapshots.length === 0) lines.push("", "(no snapshots)");
    if (snapRun && snapRun.snapshots.length > 0) {
      lines.push(
        "",
        `### Heap snapshots (server with ${VARIANT_LABEL.snapshot}, a separate process on a fresh database)`,
        "",
        "Just before each snapshot or probe (MiB). memoryUsage figures come from inside the server (through its inspector), mappings from /proc/<pid>/smaps, the rest from the snapshot itself; a probe takes no snapshot.",
        "",
        `| | ${snapRun.snapshots.map((x) => x.label).join(" | ")} |`,
        `| --- | ${snapRun.snapshots.map(() => "---").join(" | ")} |`,
      );
      const row = (label: string, f: (x: Snapshot) => string) =>
        lines.push(`| ${label} | ${snapRun.snapshots.map(f).join(" | ")} |`);
      const u = (f: (x: Usage) => number) => (x: Snapshot) => (x.usage ? mib(f(x.usage)) : "?");
      const sum = (f: (x: SnapshotSummary) => string) => (x: Snapshot) => (x.summary ? f(x.summary) : "–");
      row("**RSS** (VmRSS)", (x) => `**${mib(x.rssBefore.rss)}**`);
      row(
        "V8 heap committed (heapTotal)",
        u((x) => x.heapTotal),
      );
      row(
        "V8 heap used (heapUsed)",
        u((x) => x.heapUsed),
      );
      row(
        "live JS heap in the snapshot (after its GC)",
        sum((x) => mib(x.jsHeap)),
      );
      row(
        "ArrayBuffer backing stores (memoryUsage.arrayBuffers)",
        u((x) => x.arrayBuffers),
      );
      row(
        "external (memoryUsage.external, includes ArrayBuffers)",
        u((x) => x.external),
      );
      row(
        "WebAssembly.Memory byte lengths (snapshot)",
        sum((x) => x.wasmMemories.map(mib1).join(" + ") || "none"),
      );
      row(
        "WebAssembly memories resident (smaps)",
        (x) => `${mib(x.maps.wasm.rss)} of ${mib(x.maps.wasm.size)}`,
      );
      row("malloc brk heap resident (smaps)", (x) => mib(x.maps.brkHeap));
      row("other anonymous resident (smaps: V8 heap, mmap'd malloc, stacks)", (x) => mib(x.maps.otherAnon));
      row("files resident (smaps: node binary, libraries)", (x) => mib(x.maps.files));
      row("RSS − V8 heap committed − WASM resident − files", (x) =>
        x.usage ? mib(x.rssBefore.rss - x.usage.heapTotal - x.maps.wasm.rss - x.maps.files) : "?",
      );
      row(
        "V8 malloced memory (getHeapStatistics)",
        u((x) => x.malloced),
      );
      row("RSS after the snapshot", (x) => (x.summary ? mib(x.rssAfter.rss) : "–"));
      row(
        "snapshot: nodes, file MiB, seconds",
        sum((x) => `${x.nodes}, ${mib(x.fileBytes)}, ${x.seconds.toFixed(1)}`),
      );
      const taken = snapRun.snapshots.filter((x) => x.summary !== undefined);
      const summaries = taken.map((x) => x.summary as SnapshotSummary);
      lines.push(
        "",
        "Top 15 by self size (MiB (count); objects by constructor, the rest by V8's node type):",
        "",
      );
      lines.push(
        `| # | ${taken.map((x) => x.label).join(" | ")} |`,
        `| --- | ${taken.map(() => "---").join(" | ")} |`,
      );
      const cell = (g: Group | undefined) =>
        g ? `${g.name.replaceAll("|", "\\|")}: ${mib1(g.bytes)} (${g.count})` : "";
      for (let i = 0; i < 15; i++)
        lines.push(`| ${i + 1} | ${summaries.map((x) => cell(x.groups[i])).join(" | ")} |`);
      // What the open streams added: the last snapshot against the one before it.
      const [withStreams, without] = [summaries.at(-1), summaries.at(-2)];
      if (withStreams && without && summaries.length >= 2) {
        const base = new Map(without.groups.map((g) => [g.name, g]));
        const growth = withStreams.groups
          .map((g) => ({
            name: g.name,
            bytes: g.bytes - (base.get(g.name)?.bytes ?? 0),
            count: g.count - (base.get(g.name)?.count ?? 0),
          }))
          .sort((a, b) => b.bytes - a.bytes)
          .slice(0, 15);
        const total = withStreams.jsHeap - without.jsHeap;
        lines.push(
          "",
          `What the ${STREAMS} open streams added to the live JS heap ("${taken.at(-1)?.label}" − "${taken.at(-2)?.label}"): ${mib1(total)} MiB, ${(total / STREAMS / 1024).toFixed(1)} KiB per stream. Largest growth:`,
          "",
          "| constructor / type | MiB | objects | bytes per stream | objects per stream |",
          "| --- | --- | --- | --- | --- |",
          ...growth.map(
            (g) =>
              `| ${g.name.replaceAll("|", "\\|")} | ${mib1(g.bytes)} | ${g.count} | ${(g.bytes / STREAMS).toFixed(0)} | ${(g.count / STREAMS).toFixed(1)} |`,
          ),
        );
      }
      lines.push("", "Largest native groups in the snapshots (MiB (count)):", "");
      for (const [i, x] of summaries.entries()) {
        lines.push(
          `- ${taken[i]?.label}: ${x.topNative.map((g) => `${g.name.replaceAll("|", "\\|")} ${mib1(g.bytes)} (${g.count})`).join("; ")}`,
        );
      }
      const p = snapRun.phases;
      lines.push(
        "",
        `RSS of the snapshot server before its snapshots: ${p.map((x) => `${x.label} ${mib(x.rss.rss)}`).join(", ")} MiB.`,
      );
    }
    lines.push("");
  }
  return lines.join("\n");
}

// ---------------------------------------------------------------------------------------------

const sh = (cmd: string, cmdArgs: string[]) => {
  try {
    return execFileSync(cmd, cmdArgs, { cwd: ROOT, encoding: "utf8" }).trim();
  } catch {
    return "?";
  }
};
const command = `node bench/memory.ts ${process.argv.slice(2).join(" ")}`.trim();
const dirty = sh("git", ["status", "--short", "--", "src"]);
const header = [
  "# Server memory (issue 7)",
  "",
  `Command: \`${command}\` (--mb ${MB} --streams ${STREAMS} --connections ${CONNECTIONS} --runs ${RUNS} --batch ${BATCH} --payload-kb ${PAYLOAD_BYTES / 1024} --appends ${APPENDS} --idle-ms ${IDLE_MS})`,
  "",
  `Date: ${new Date().toISOString()}. Machine: ${cpus().length} CPUs (nproc ${sh("nproc", [])}), ${(totalmem() / 2 ** 30).toFixed(1)} GiB, Node ${process.version}. Load before: \`${sh("uptime", [])}\`. Commit ${sh("git", ["rev-parse", "--short", "HEAD"])}${dirty && dirty !== "?" ? ` with uncommitted changes in src/ (${dirty.split("\n").length} files)` : ""}.`,
  "",
  `Every figure below was measured in this run. Payloads: random base64 text, ~${PAYLOAD_BYTES / 1024} KiB of JSON each. Streams: one run, first event appended before they open; the timed appends carry a tiny payload. Client and server share the machine.`,
  "",
];

const results: Measured[] = [];
const variants: Variant[] = ["npm-start"];
if (!args["skip-plain"]) variants.push("plain");
if (!args["skip-snapshots"]) variants.push("snapshot");
const benchStarted = performance.now();
for (const backend of BACKENDS) {
  if (backend === "postgres" && !(await postgresReachable())) {
    console.log("PostgreSQL is unreachable: skipped");
    continue;
  }
  for (const variant of variants) {
    const t = performance.now();
    console.error(`${backend}, ${variant}...`);
    results.push(await measure(backend, variant));
    console.error(`${backend}, ${variant}: ${((performance.now() - t) / 1000).toFixed(0)} s`);
  }
}
header.push(
  `Load after: \`${sh("uptime", [])}\`. Total time ${((performance.now() - benchStarted) / 1000).toFixed(0)} s.`,
  "",
);
const text = report(results, header);
console.log(text);
mkdirSync(resolve(OUT, ".."), { recursive: true });
writeFileSync(OUT, `${text}\n`);
process.exit(0);
