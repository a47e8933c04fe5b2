import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import http from "node:http";
import http2 from "node:http2";
import https from "node:https";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { createClient as createConnectClient } from "@connectrpc/connect";
import { createConnectTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { RunService } from "../gen/agentstore/v1/run_service_pb.ts";
import { type AgentStoreClient, Code, ConnectError, createClient } from "../src/client/index.ts";
import { bind, type Handler, type HttpServer, ListenError, listen } from "../src/server/http.ts";
import { rejectsWith } from "./helpers/assertions.ts";
import { backends, pglite, type TestDatabase } from "./helpers/databases.ts";
import { type GrpcError, grpcRunService, struct, unary } from "./helpers/grpc-js.ts";
import { startServer, type TestServer, useServer } from "./helpers/servers.ts";

/**
 * The HTTP layer (src/server/http.ts): oversize requests on HTTP/2, shutdown, binding the port.
 * Nothing here waits for time to pass; the few time limits are failure conditions far from what
 * the operation takes (milliseconds), so that the tests also pass on loaded machines.
 */

const MiB = 1024 * 1024;
const { NGHTTP2_NO_ERROR, NGHTTP2_REFUSED_STREAM } = http2.constants;

/** Rejects when the promise has not settled within ms. */
async function within<T>(ms: number, what: string, promise: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not happen within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** A promise with its resolve function, to hold a handler until the test lets it go. */
function gate<T = void>() {
  let open!: (value: T) => void;
  const opened = new Promise<T>((resolve) => {
    open = resolve;
  });
  return { open, opened };
}

const bigMetadata = (bytes: number) => ({ blob: "x".repeat(bytes) });

interface H2Result {
  status: number | undefined;
  body: string;
  rstCode: number | undefined;
  error: Error | undefined;
}

/** One HTTP/2 request on a session; resolves when the stream has closed, with how it closed. */
function h2request(
  session: http2.ClientHttp2Session,
  headers: http2.OutgoingHttpHeaders,
  options: { body?: Buffer; end?: boolean } = {},
): { stream: http2.ClientHttp2Stream; result: Promise<H2Result>; response: Promise<number | undefined> } {
  const stream = session.request(headers, { endStream: options.body === undefined && options.end !== false });
  const result: H2Result = { status: undefined, body: "", rstCode: undefined, error: undefined };
  const response = new Promise<number | undefined>((resolve) => {
    stream.once("response", (h) => {
      result.status = Number(h[":status"]);
      resolve(result.status);
    });
  });
  stream.setEncoding("utf8");
  stream.on("data", (chunk: string) => {
    result.body += chunk;
  });
  stream.on("error", (err) => {
    result.error = err;
  });
  if (options.body !== undefined) {
    if (options.end === false) stream.write(options.body);
    else stream.end(options.body);
  }
  return {
    stream,
    response,
    // Not events.once(): it rejects on the stream's "error", and a reset is a result here.
    result: new Promise<H2Result>((resolve) =>
      stream.once("close", () => {
        result.rstCode = stream.rstCode;
        resolve(result);
      }),
    ),
  };
}

async function connectH2(url: string, options: http2.SecureClientSessionOptions = {}) {
  const session = http2.connect(url, options);
  session.on("error", () => {});
  await once(session, "connect");
  return session;
}

/**
 * The response as the HTTP/1.1 type, whichever protocol it is: the calls used here are the same on
 * both, but the union of their overloads is not callable.
 */
const asH1 = (res: Parameters<Handler>[1]) => res as http.ServerResponse;

/** A request handler that answers at once with 200 "refused" without reading the request body. */
const refuseUnread: Handler = (_req, res) => {
  asH1(res).writeHead(200, { "content-type": "text/plain" }).end("refused");
};

/**
 * Reads the first chunk of the request body, drops the request and answers, as a Connect handler
 * does with a message over its read limit.
 */
const refuseAfterFirstChunk: Handler = (req, res) => {
  void (async () => {
    for await (const _ of req) break;
    asH1(res).writeHead(200, { "content-type": "text/plain" }).end("refused");
  })();
};

/** gRPC Health/Check with an empty request, by hand: what any plain HTTP/2 client would send. */
const HEALTH_CHECK = {
  ":method": "POST",
  ":path": "/grpc.health.v1.Health/Check",
  "content-type": "application/grpc",
  te: "trailers",
};
const EMPTY_GRPC_MESSAGE = Buffer.from([0, 0, 0, 0, 0]);
const HTTP2_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
const EMPTY_SETTINGS_FRAME = Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0]);

/**
 * An HTTP/2 client that keeps its side of the connection open after GOAWAY and FIN, like a stuck
 * peer or a half-open proxy: raw TCP, the preface and an empty SETTINGS frame, then silence.
 * Resolves once the server has taken the connection as HTTP/2 (its SETTINGS arrived).
 */
async function stubbornH2Client(port: number) {
  const socket = net.connect({ host: "127.0.0.1", port, allowHalfOpen: true });
  socket.on("error", () => {});
  const hungUp = new Promise<void>((resolve) => {
    socket.once("end", resolve);
    socket.once("close", resolve);
  });
  let received = Buffer.alloc(0);
  socket.on("data", (chunk: Buffer) => {
    received = Buffer.concat([received, chunk]);
  });
  socket.write(Buffer.concat([HTTP2_PREFACE, EMPTY_SETTINGS_FRAME]));
  await within(10_000, "the server's SETTINGS", once(socket, "data"));
  return {
    hungUp,
    /** A GOAWAY frame header without debug data: length 8, type 7. */
    sawGoaway: () => received.includes(Buffer.from([0, 0, 8, 7])),
    destroy: () => socket.destroy(),
  };
}

/** The number of runs stored, all pages. */
async function runCount(client: AgentStoreClient) {
  let total = 0;
  let pageToken = "";
  do {
    const page = await client.runs.listRuns({ pageSize: 500, pageToken });
    total += page.runs.length;
    pageToken = page.nextPageToken;
  } while (pageToken !== "");
  return total;
}

/**
 * Asserts that a refused CreateRun stored nothing: exactly `created` runs were added since
 * `before`, and none in the refused request's thread (each refusal names a thread of its own).
 */
async function assertStoredOnly(
  client: AgentStoreClient,
  before: number,
  created: number,
  refusedThread: string,
) {
  const { runs } = await client.runs.listRuns({ threadId: refusedThread });
  assert.equal(runs.length, 0, `the refused CreateRun of ${refusedThread} was stored`);
  assert.equal(await runCount(client), before + created, "a refused CreateRun stored a run");
}

for (const backend of await backends()) {
  describe(`oversize requests over HTTP/2 (read limit 1 MiB) on ${backend.name}`, {
    skip: backend.skip,
  }, () => {
    const fixture = useServer(backend, { AGENTSTORE_MAX_MESSAGE_BYTES: String(MiB) });
    const bigThread = () => `big-${crypto.randomUUID()}`;

    it("the typed client gets RESOURCE_EXHAUSTED for 12 MiB, and its connection keeps working", async () => {
      // Over node:http2's default maxSessionMemory (10 MB) of the client's session.
      const client = createClient({ baseUrl: fixture.server.url });
      const total = await runCount(fixture.client);
      const threadId = bigThread();
      try {
        await rejectsWith(
          client.runs.createRun({ run: { threadId, metadata: bigMetadata(12 * MiB) } }),
          Code.ResourceExhausted,
        );
        const { run } = await client.runs.createRun({ run: { threadId: "after-big" } });
        assert.equal(run?.threadId, "after-big");
      } finally {
        client.close();
      }
      await assertStoredOnly(fixture.client, total, 1, threadId);
    });

    it("refusals of 4 MiB in a row do not add up to a poisoned connection", async () => {
      const client = createClient({ baseUrl: fixture.server.url });
      const total = await runCount(fixture.client);
      const threadId = bigThread();
      try {
        for (let i = 0; i < 4; i++) {
          await rejectsWith(
            client.runs.createRun({ run: { threadId, metadata: bigMetadata(4 * MiB) } }),
            Code.ResourceExhausted,
          );
          const { run } = await client.runs.createRun({ run: { threadId: `small-${i}` } });
          assert.equal(run?.threadId, `small-${i}`);
        }
      } finally {
        client.close();
      }
      await assertStoredOnly(fixture.client, total, 4, threadId);
    });

    it("the Connect protocol over HTTP/2 gets RESOURCE_EXHAUSTED too, and keeps its connection", async () => {
      const sessionManager = new Http2SessionManager(fixture.server.url);
      const client = createConnectClient(
        RunService,
        createConnectTransport({ baseUrl: fixture.server.url, httpVersion: "2", sessionManager }),
      );
      const total = await runCount(fixture.client);
      const threadId = bigThread();
      try {
        await rejectsWith(
          client.createRun({ run: { threadId, metadata: bigMetadata(12 * MiB) } }),
          Code.ResourceExhausted,
        );
        const { run } = await client.createRun({ run: { threadId: "connect-after-big" } });
        assert.equal(run?.threadId, "connect-after-big");
      } finally {
        sessionManager.abort();
      }
      await assertStoredOnly(fixture.client, total, 1, threadId);
    });

    it("a grpc-js client gets RESOURCE_EXHAUSTED, and its connection keeps working", async () => {
      const client = grpcRunService(fixture.server.app.port);
      const total = await runCount(fixture.client);
      const threadId = bigThread();
      try {
        const big = { run: { thread_id: threadId, metadata: struct(bigMetadata(12 * MiB)) } };
        const err = await unary(client, "CreateRun", big).then(
          () => assert.fail("an oversize request succeeded"),
          (e: GrpcError) => e,
        );
        assert.equal(err.code, Code.ResourceExhausted, err.message);
        const res = await unary<{ run: { thread_id: string } }>(client, "CreateRun", {
          run: { thread_id: "grpc-js-after-big" },
        });
        assert.equal(res.run.thread_id, "grpc-js-after-big");
      } finally {
        client.close();
      }
      await assertStoredOnly(fixture.client, total, 1, threadId);
    });
  });

  describe(`oversize requests at the default read limit (16 MiB) on ${backend.name}`, {
    skip: backend.skip,
  }, () => {
    const fixture = useServer(backend);

    it("a 17 MiB CreateRun is RESOURCE_EXHAUSTED, stores nothing, and the next call on the client succeeds", async () => {
      const client: AgentStoreClient = fixture.client;
      const total = await runCount(client);
      const threadId = `big-${crypto.randomUUID()}`;
      await rejectsWith(
        client.runs.createRun({ run: { threadId, metadata: bigMetadata(17 * MiB) } }),
        Code.ResourceExhausted,
      );
      const { run } = await client.runs.createRun({ run: { threadId: "after-17" } });
      assert.equal(run?.threadId, "after-17");
      await assertStoredOnly(client, total, 1, threadId);
    });
  });
}

describe("HTTP/2 request bodies that the handler did not read to the end", () => {
  const servers: HttpServer[] = [];
  after(async () => {
    for (const server of servers) await server.close(0);
  });
  const serve = async (handler: Handler, drain?: Parameters<typeof listen>[1]["drain"]) => {
    const server = await listen(handler, { host: "127.0.0.1", port: 0, drain });
    servers.push(server);
    return `http://127.0.0.1:${server.port}`;
  };

  it("are read to their end before the answer, which a node:http2 client then accepts", async () => {
    const session = await connectH2(await serve(refuseAfterFirstChunk));
    try {
      const { result } = h2request(
        session,
        { ":method": "POST", ":path": "/" },
        { body: Buffer.alloc(12 * MiB) },
      );
      const res = await within(10_000, "the answer and the end of the stream", result);
      assert.equal(res.error, undefined);
      assert.equal(res.status, 200);
      assert.equal(res.body, "refused");
      assert.equal(res.rstCode, NGHTTP2_NO_ERROR);
      // And the session still answers.
      const next = await h2request(session, { ":path": "/" }).result;
      assert.equal(next.status, 200);
    } finally {
      session.close();
    }
  });

  it("past the drain limit, the answer comes at once with a NO_ERROR reset", async () => {
    const session = await connectH2(await serve(refuseAfterFirstChunk, { maxBytes: 256 * 1024 }));
    try {
      const { result } = h2request(
        session,
        { ":method": "POST", ":path": "/" },
        { body: Buffer.alloc(4 * MiB) },
      );
      const res = await within(10_000, "the answer and the end of the stream", result);
      assert.equal(res.status, 200);
      assert.equal(res.body, "refused");
      assert.equal(res.rstCode, NGHTTP2_NO_ERROR);
      assert.equal(res.error, undefined);
    } finally {
      session.close();
    }
  });

  it("a client that waits for the answer before sending more gets it, then a NO_ERROR reset", async () => {
    const session = await connectH2(await serve(refuseAfterFirstChunk, { quietMs: 100 }));
    try {
      const { result } = h2request(
        session,
        { ":method": "POST", ":path": "/" },
        { body: Buffer.alloc(1024), end: false },
      );
      const res = await within(10_000, "the answer and the end of the stream", result);
      assert.equal(res.status, 200);
      assert.equal(res.body, "refused");
      assert.equal(res.rstCode, NGHTTP2_NO_ERROR);
      assert.equal(res.error, undefined);
    } finally {
      session.close();
    }
  });

  it("do not hold back a response that streams while the request is still open", async () => {
    const url = await serve((req, res) => {
      asH1(res).writeHead(200, { "content-type": "text/plain" }).write("first;");
      req.resume();
      req.once("end", () => res.end("last"));
    });
    const session = await connectH2(url);
    try {
      const { stream, result } = h2request(session, { ":method": "POST", ":path": "/" }, { end: false });
      // The first chunk arrives while the client has not finished its request.
      const [first] = (await once(stream, "data")) as [string];
      assert.equal(first, "first;");
      stream.end("bye");
      const res = await within(10_000, "the answer and the end of the stream", result);
      assert.equal(res.body, "first;last");
      assert.equal(res.error, undefined);
    } finally {
      session.close();
    }
  });

  it("a streaming response that ends before its request ends the stream too, with a NO_ERROR reset", async () => {
    const url = await serve(
      (req, res) => {
        asH1(res).writeHead(200, { "content-type": "text/plain" }).write("first;");
        void (async () => {
          for await (const _ of req) break;
          res.end("last");
        })();
      },
      { quietMs: 100 },
    );
    const session = await connectH2(url);
    try {
      const { stream, result } = h2request(session, { ":method": "POST", ":path": "/" }, { end: false });
      const [first] = (await once(stream, "data")) as [string];
      assert.equal(first, "first;");
      stream.write("more");
      const res = await within(10_000, "the end of the stream", result);
      assert.equal(res.body, "first;last");
      assert.equal(res.rstCode, NGHTTP2_NO_ERROR);
      assert.equal(res.error, undefined);
    } finally {
      session.close();
    }
  });
});

describe("close()", () => {
  const GRACE_MS = 30_000;
  /** Far below the grace period, far above the milliseconds closing idle connections takes. */
  const AT_ONCE_MS = 10_000;
  /** HTTP/1.1 keep-alive connections time out by themselves after about 6 s; closing must not wait. */
  const H1_AT_ONCE_MS = 3_000;

  it("closes idle HTTP/2 connections at once, with a GOAWAY, also one whose client does not hang up", async () => {
    const server = await listen(refuseUnread, { host: "127.0.0.1", port: 0 });
    const session = await connectH2(`http://127.0.0.1:${server.port}`);
    const stubborn = await stubbornH2Client(server.port);
    try {
      const goaway = once(session, "goaway");
      const sessionClosed = once(session, "close");
      assert.equal((await h2request(session, { ":path": "/" }).result).status, 200);
      await within(AT_ONCE_MS, "close() with an idle HTTP/2 connection", server.close(GRACE_MS));
      const [code] = (await goaway) as [number];
      assert.equal(code, NGHTTP2_NO_ERROR);
      await within(AT_ONCE_MS, "the client's session closing", sessionClosed);
      await within(AT_ONCE_MS, "the server hanging up on the raw client", stubborn.hungUp);
      assert.ok(stubborn.sawGoaway(), "no GOAWAY frame reached the raw client");
    } finally {
      stubborn.destroy();
      session.destroy();
      await server.close(0);
    }
  });

  it("closes an idle HTTP/1.1 keep-alive connection at once", async () => {
    const server = await listen(refuseUnread, { host: "127.0.0.1", port: 0 });
    const agent = new http.Agent({ keepAlive: true });
    try {
      const res = await new Promise<http.IncomingMessage>((resolve, reject) =>
        http.get({ host: "127.0.0.1", port: server.port, path: "/", agent }, resolve).on("error", reject),
      );
      res.resume();
      await once(res, "end");
      assert.equal(res.headers.connection, "keep-alive");
      await within(H1_AT_ONCE_MS, "close() with an idle HTTP/1.1 connection", server.close(GRACE_MS));
    } finally {
      agent.destroy();
      await server.close(0);
    }
  });

  it("lets an HTTP/2 call in flight finish, refuses new connections, then closes", async () => {
    const arrived = gate();
    const release = gate();
    const server = await listen(
      (_req, res) => {
        arrived.open();
        void release.opened.then(() => res.end("done"));
      },
      { host: "127.0.0.1", port: 0 },
    );
    const url = `http://127.0.0.1:${server.port}`;
    const session = await connectH2(url);
    try {
      const call = h2request(session, { ":path": "/" }).result;
      await arrived.opened;
      let closed = false;
      const closing = server.close(GRACE_MS).then(() => {
        closed = true;
      });
      await assert.rejects(connectH2(url), { code: "ECONNREFUSED" });
      assert.equal(closed, false, "close() resolved while a call was in flight");
      release.open();
      const res = await call;
      assert.equal(res.status, 200);
      assert.equal(res.body, "done");
      assert.equal(res.error, undefined);
      await within(AT_ONCE_MS, "close() after the last call ended", closing);
    } finally {
      session.destroy();
      await server.close(0);
    }
  });

  it("lets an HTTP/1.1 request in flight finish with connection: close, then closes", async () => {
    const arrived = gate();
    const release = gate();
    const server = await listen(
      (_req, res) => {
        arrived.open();
        void release.opened.then(() => res.end("done"));
      },
      { host: "127.0.0.1", port: 0 },
    );
    const agent = new http.Agent({ keepAlive: true });
    try {
      const response = new Promise<http.IncomingMessage>((resolve, reject) =>
        http.get({ host: "127.0.0.1", port: server.port, path: "/", agent }, resolve).on("error", reject),
      );
      await arrived.opened;
      let closed = false;
      const closing = server.close(GRACE_MS).then(() => {
        closed = true;
      });
      assert.equal(closed, false);
      release.open();
      const res = await response;
      res.setEncoding("utf8");
      let body = "";
      res.on("data", (chunk: string) => {
        body += chunk;
      });
      await once(res, "end");
      assert.equal(body, "done");
      await within(H1_AT_ONCE_MS, "close() after the request ended", closing);
    } finally {
      agent.destroy();
      await server.close(0);
    }
  });

  it("answers a request whose body it is still draining, and closes at once", async () => {
    const server = await listen(refuseUnread, { host: "127.0.0.1", port: 0, drain: { quietMs: 60_000 } });
    const session = await connectH2(`http://127.0.0.1:${server.port}`);
    try {
      const { stream, result } = h2request(
        session,
        { ":method": "POST", ":path": "/" },
        { body: Buffer.alloc(1024), end: false },
      );
      // The body reached the server (which drains it and holds the answer) once it pings back.
      await new Promise<void>((resolve, reject) => session.ping((err) => (err ? reject(err) : resolve())));
      assert.equal(stream.closed, false);
      await within(AT_ONCE_MS, "close() during a drain", server.close(GRACE_MS));
      const res = await result;
      assert.equal(res.status, 200);
      assert.equal(res.body, "refused");
    } finally {
      session.destroy();
      await server.close(0);
    }
  });

  describe("on TLS", () => {
    let dir: string;
    let ca: Buffer;
    before(() => {
      dir = mkdtempSync(join(tmpdir(), "agentstore-http-tls-"));
      execFileSync(
        "openssl",
        [
          "req",
          "-x509",
          "-newkey",
          "ec",
          "-pkeyopt",
          "ec_paramgen_curve:prime256v1",
          "-nodes",
          "-days",
          "1",
          "-subj",
          "/CN=agentstore-test",
          "-addext",
          "subjectAltName=IP:127.0.0.1",
          "-keyout",
          join(dir, "key.pem"),
          "-out",
          join(dir, "cert.pem"),
        ],
        { stdio: "ignore" },
      );
      ca = readFileSync(join(dir, "cert.pem"));
    });
    after(() => rmSync(dir, { recursive: true, force: true }));

    it("serves HTTP/2 and HTTP/1.1 by ALPN, and closes both idle connections at once", async () => {
      const server = await listen(refuseUnread, {
        host: "127.0.0.1",
        port: 0,
        tls: { certFile: join(dir, "cert.pem"), keyFile: join(dir, "key.pem") },
      });
      const session = await connectH2(`https://127.0.0.1:${server.port}`, { ca });
      const agent = new https.Agent({ keepAlive: true, ca });
      try {
        const h2 = await h2request(session, { ":path": "/" }).result;
        assert.equal(h2.status, 200);
        assert.equal(h2.body, "refused");
        const res = await new Promise<http.IncomingMessage>((resolve, reject) =>
          https.get({ host: "127.0.0.1", port: server.port, path: "/", agent }, resolve).on("error", reject),
        );
        assert.equal(res.httpVersion, "1.1");
        res.resume();
        await once(res, "end");
        await within(H1_AT_ONCE_MS, "close() with idle TLS connections", server.close(GRACE_MS));
      } finally {
        session.destroy();
        agent.destroy();
        await server.close(0);
      }
    });
  });

  describe("of the whole server (SIGTERM), on the embedded database", () => {
    let db: TestDatabase;
    let server: TestServer;
    before(async () => {
      db = await pglite().create();
      server = await startServer(db, { AGENTSTORE_SHUTDOWN_GRACE_MS: String(GRACE_MS) });
    });
    after(async () => {
      await server?.close();
      await db?.drop();
    });

    it("is immediate with idle connections open, and ends a stream in flight with UNAVAILABLE", async () => {
      // An idle plain HTTP/2 client, and one that does not hang up by itself after GOAWAY.
      const session = await connectH2(server.url);
      const stubborn = await stubbornH2Client(server.app.port);
      const checked = await h2request(session, HEALTH_CHECK, { body: EMPTY_GRPC_MESSAGE }).result;
      assert.equal(checked.status, 200);
      // An idle Connect client over HTTP/1.1 keep-alive.
      const connect = createClient({ baseUrl: server.url, protocol: "connect" });
      // A stream in flight on the typed gRPC client.
      const client = createClient({ baseUrl: server.url });
      try {
        const { run } = await connect.runs.createRun({ run: { threadId: "shutdown" } });
        const runId = run?.runId ?? "";
        await client.runs.appendRunEvents({ runId, events: [{ type: "note", payload: { i: 1 } }] });
        const stream = client.runs.streamRunEvents({ runId })[Symbol.asyncIterator]();
        const first = await stream.next();
        assert.equal(first.value?.event?.seq, 1n);
        const rest = stream.next().then(
          () => assert.fail("the stream went on past the shutdown"),
          (err: unknown) => ConnectError.from(err),
        );
        await within(AT_ONCE_MS, "the server closing", server.close());
        assert.equal(Code[(await rest).code], Code[Code.Unavailable]);
        await within(AT_ONCE_MS, "the server hanging up on the raw client", stubborn.hungUp);
      } finally {
        stubborn.destroy();
        session.destroy();
        connect.close();
        client.close();
      }
    });
  });
});

describe("binding the port", () => {
  const occupy = async (host: string) => {
    const blocker = net.createServer();
    await new Promise<void>((resolve) => blocker.listen(0, host, resolve));
    return { blocker, port: (blocker.address() as net.AddressInfo).port };
  };

  it("a port in use is a ListenError with a one-line message naming host:port", async () => {
    const { blocker, port } = await occupy("127.0.0.1");
    try {
      for (const attempt of [
        () => listen(refuseUnread, { host: "127.0.0.1", port }),
        () => bind({ host: "127.0.0.1", port }),
      ]) {
        await assert.rejects(attempt(), (err: unknown) => {
          assert.ok(err instanceof ListenError, String(err));
          assert.equal(err.code, "EADDRINUSE");
          assert.equal(err.address, `127.0.0.1:${port}`);
          assert.equal(err.message, `cannot listen on 127.0.0.1:${port}: the address is already in use`);
          return true;
        });
      }
    } finally {
      blocker.close();
    }
  });

  it("names an IPv6 address in brackets", async () => {
    const { blocker, port } = await occupy("::1");
    try {
      await assert.rejects(bind({ host: "::1", port }), {
        name: "ListenError",
        code: "EADDRINUSE",
        message: `cannot listen on [::1]:${port}: the address is already in use`,
      });
    } finally {
      blocker.close();
    }
  });

  it("an address this machine does not have is a ListenError too", async () => {
    // 192.0.2.0/24 is TEST-NET-1, reserved for documentation: never a local address.
    await assert.rejects(bind({ host: "192.0.2.1", port: 50051 }), {
      name: "ListenError",
      code: "EADDRNOTAVAIL",
      message: "cannot listen on 192.0.2.1:50051: the address is not available on this machine",
    });
  });

  it("a privileged port is a ListenError", {
    skip: process.getuid?.() === 0 ? "root may bind any port" : false,
  }, async () => {
    await assert.rejects(bind({ host: "127.0.0.1", port: 1 }), { name: "ListenError", code: "EACCES" });
  });

  it("bind() holds the port before serve(); requests that arrive in between are answered after it", async () => {
    const bound = await bind({ host: "127.0.0.1", port: 0 });
    const session = await connectH2(`http://127.0.0.1:${bound.port}`);
    try {
      const { result } = h2request(session, { ":path": "/" });
      // The server has read the request once it answers a ping sent after it.
      await new Promise<void>((resolve, reject) => session.ping((err) => (err ? reject(err) : resolve())));
      const server = bound.serve(refuseUnread);
      assert.equal(server.port, bound.port);
      assert.throws(() => bound.serve(refuseUnread), /already serving/);
      const res = await result;
      assert.equal(res.status, 200);
      assert.equal(res.body, "refused");
      const h1 = await new Promise<number | undefined>((resolve, reject) =>
        http
          .get({ host: "127.0.0.1", port: bound.port, path: "/" }, (r) => {
            r.resume();
            resolve(r.statusCode);
          })
          .on("error", reject),
      );
      assert.equal(h1, 200);
    } finally {
      session.destroy();
      await bound.close(0);
    }
  });

  it("close() before serve() refuses the requests that were waiting, so clients may retry them", async () => {
    const bound = await bind({ host: "127.0.0.1", port: 0 });
    const session = await connectH2(`http://127.0.0.1:${bound.port}`);
    try {
      const { result } = h2request(session, { ":path": "/" });
      await new Promise<void>((resolve, reject) => session.ping((err) => (err ? reject(err) : resolve())));
      await within(10_000, "close() before serve()", bound.close(30_000));
      const res = await result;
      assert.equal(res.rstCode, NGHTTP2_REFUSED_STREAM);
      assert.throws(() => bound.serve(refuseUnread), /closed/);
    } finally {
      session.destroy();
    }
  });
});
