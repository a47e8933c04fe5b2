/**
 * Summarises a V8 .cpuprofile (node --cpu-prof) by self time, grouped by area, plus the top
 * functions and inclusive time per area (share of samples with a frame of that area on the stack).
 *
 *   node bench/profile-summary.ts /tmp/prof/CPU.….cpuprofile [--from µs --to µs] [--top 15]
 *
 * --from/--to restrict to a window in the profile's clock (CLOCK_MONOTONIC microseconds, the clock
 * of process.hrtime; bench/write-path-profile.ts prints its load window in it). Native frames
 * without a script (socket writes, JSON.parse, ...) count towards the area of the JavaScript that
 * called them.
 */
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

const { values: args, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    from: { type: "string" },
    to: { type: "string" },
    top: { type: "string", default: "15" },
  },
});
const file = positionals[0];
if (file === undefined) {
  console.error("usage: node bench/profile-summary.ts FILE.cpuprofile [--from µs --to µs] [--top 15]");
  process.exit(2);
}

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number; columnNumber: number };
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}
const profile = JSON.parse(readFileSync(file, "utf8")) as Profile;

/** The area of a script URL; "" for frames without a script. */
function areaOf(url: string, fn: string): string {
  if (fn === "(idle)") return "idle";
  if (fn === "(garbage collector)") return "GC";
  if (fn === "(program)") return "(program): V8/native, unattributed";
  if (fn === "(root)") return "(root)";
  if (url === "") return "";
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url)?.[1];
  if (pkg !== undefined) {
    if (pkg.startsWith("@connectrpc/")) return "@connectrpc";
    if (pkg === "@bufbuild/protobuf") return "@bufbuild/protobuf";
    if (pkg === "@bufbuild/protovalidate" || pkg === "@bufbuild/cel") return "@bufbuild/protovalidate";
    if (pkg === "pg" || pkg.startsWith("pg-") || pkg === "postgres-array" || pkg === "postgres-date")
      return "pg";
    if (pkg.startsWith("@mikro-orm/") || pkg === "kysely" || pkg === "knex") return "mikro-orm / kysely";
    if (pkg === "pino" || pkg.startsWith("pino-") || pkg === "sonic-boom") return "pino (logging)";
    if (pkg === "zod") return "zod";
    return `other package: ${pkg}`;
  }
  if (/\/src\//.test(url) && url.startsWith("file:")) return "agentstore src/";
  if (/\/gen\//.test(url) && url.startsWith("file:")) return "agentstore gen/ (generated protobuf)";
  if (/^node:(internal\/)?http2/.test(url) || url.startsWith("node:internal/http2")) return "node: http2";
  if (/^node:(internal\/)?(streams?|stream_base_commons|net|internal\/net|internal\/stream)/.test(url))
    return "node: streams / net";
  if (/^node:internal\/(timers|process\/task_queues|async_hooks|process\/promises)|^node:timers/.test(url))
    return "node: timers / microtasks / async hooks";
  if (/^node:(events|internal\/event_target|internal\/abort_controller)/.test(url))
    return "node: events / AbortController";
  if (/^node:(buffer|internal\/buffer|internal\/encoding|internal\/url|url|util|internal\/util)/.test(url))
    return "node: buffer / encoding / url / util";
  if (/^node:internal\/(modules|deps\/amaro|bootstrap)/.test(url)) return "node: module loading";
  if (url.startsWith("node:")) return "node: other internals";
  return `other: ${url.slice(0, 60)}`;
}

const byId = new Map<number, ProfileNode>();
const parent = new Map<number, number>();
for (const n of profile.nodes) {
  byId.set(n.id, n);
  for (const c of n.children ?? []) parent.set(c, n.id);
}
/** A node's area, a native frame taking its nearest scripted caller's. */
const areaCache = new Map<number, string>();
function area(id: number): string {
  const cached = areaCache.get(id);
  if (cached !== undefined) return cached;
  const n = byId.get(id);
  let a = n === undefined ? "?" : areaOf(n.callFrame.url, n.callFrame.functionName);
  if (a === "") {
    const p = parent.get(id);
    a = p === undefined ? "native, no caller" : area(p);
    if (a === "(root)") a = "native, no caller";
  }
  areaCache.set(id, a);
  return a;
}

const from = args.from === undefined ? -Infinity : Number(args.from);
const to = args.to === undefined ? Infinity : Number(args.to);
const selfByArea = new Map<string, number>();
const inclusiveByArea = new Map<string, number>();
const selfByNode = new Map<number, number>();
/** Busy time by the nearest package or agentstore frame on the stack (the code the work was for). */
const onBehalf = new Map<string, number>();
const isPackageArea = (a: string) =>
  !a.startsWith("node:") && !a.startsWith("(") && a !== "idle" && a !== "GC" && a !== "native, no caller";
let total = 0;
let t = profile.startTime;
for (let i = 0; i < profile.samples.length; i++) {
  t += profile.timeDeltas[i] ?? 0;
  if (t < from || t > to) continue;
  // A sample stands for the time until the next one.
  const dt = profile.timeDeltas[i + 1] ?? 0;
  const id = profile.samples[i] ?? 0;
  total += dt;
  const a = area(id);
  selfByArea.set(a, (selfByArea.get(a) ?? 0) + dt);
  selfByNode.set(id, (selfByNode.get(id) ?? 0) + dt);
  const seen = new Set<string>();
  for (let k: number | undefined = id; k !== undefined; k = parent.get(k)) seen.add(area(k));
  for (const s of seen) inclusiveByArea.set(s, (inclusiveByArea.get(s) ?? 0) + dt);
  if (a !== "idle") {
    let owner =
      a.startsWith("node:") || a === "native, no caller"
        ? "node only (no package frame on the stack: HTTP/2 frames, socket reads, timers)"
        : a;
    if (!isPackageArea(a) && owner.startsWith("node only")) {
      for (let k = parent.get(id); k !== undefined; k = parent.get(k)) {
        if (isPackageArea(area(k))) {
          owner = area(k);
          break;
        }
      }
    }
    onBehalf.set(owner, (onBehalf.get(owner) ?? 0) + dt);
  }
}

const idle = selfByArea.get("idle") ?? 0;
const busy = total - idle;
const f = (us: number) => `${(us / 1000).toFixed(0)} ms`;
const p = (us: number, of: number) => `${((100 * us) / of).toFixed(1)}%`;
console.log(
  `Window ${(total / 1e6).toFixed(2)} s of samples; busy (not idle) ${(busy / 1e6).toFixed(2)} s = ${p(busy, total)} of the main thread.\n`,
);
console.log("| area | self time | % of window | % of busy | inclusive % of busy |");
console.log("| --- | --- | --- | --- | --- |");
for (const [a, us] of [...selfByArea.entries()].sort((x, y) => y[1] - x[1])) {
  const inc = a === "idle" ? "" : p(inclusiveByArea.get(a) ?? 0, busy);
  console.log(`| ${a} | ${f(us)} | ${p(us, total)} | ${a === "idle" ? "" : p(us, busy)} | ${inc} |`);
}

console.log(
  "\nBusy time by the nearest package (or agentstore) frame on the stack: node internals and natives count for the code that called them.\n",
);
console.log("| on behalf of | time | % of busy |");
console.log("| --- | --- | --- |");
for (const [a, us] of [...onBehalf.entries()].sort((x, y) => y[1] - x[1]))
  console.log(`| ${a} | ${f(us)} | ${p(us, busy)} |`);

// Top functions by self time, same function (name, script, line) merged across call paths.
const byFunction = new Map<string, number>();
for (const [id, us] of selfByNode) {
  const n = byId.get(id);
  if (n === undefined) continue;
  const { functionName, url, lineNumber } = n.callFrame;
  const where =
    url === ""
      ? `native, in ${area(id)}`
      : `${url.replace(/^.*node_modules\//, "").replace(/^file:\/\/.*?\/(src|gen)\//, "$1/")}:${lineNumber + 1}`;
  const key = `${functionName || "(anonymous)"} · ${where}`;
  byFunction.set(key, (byFunction.get(key) ?? 0) + us);
}
console.log(`\n| # | function · script:line | self | % of busy |`);
console.log("| --- | --- | --- | --- |");
let rank = 0;
for (const [key, us] of [...byFunction.entries()].sort((x, y) => y[1] - x[1])) {
  if (key.startsWith("(idle)")) continue;
  if (++rank > Number(args.top)) break;
  console.log(`| ${rank} | ${key.replaceAll("|", "\\|")} | ${f(us)} | ${p(us, busy)} |`);
}
