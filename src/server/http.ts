import { readFileSync } from "node:fs";
import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import { StartupError } from "../core/errors.ts";

export type Handler = (
  req: http.IncomingMessage | http2.Http2ServerRequest,
  res: http.ServerResponse | http2.Http2ServerResponse,
) => void;

/** The little of a logger this file uses (a pino Logger is one). */
export interface HttpLogger {
  debug(obj: object, msg: string): void;
}

export interface ListenOptions {
  host: string;
  port: number;
  tls?: { certFile: string; keyFile: string } | undefined;
  /** How far the server reads a request body that its handler answered without reading. */
  drain?: Partial<DrainLimits> | undefined;
}

/**
 * A handler may answer an HTTP/2 request before reading all of it (a message over the size limit, a
 * refused API key). The client may still be sending: the server then reads and drops the rest of
 * the body before it answers, within these limits; past them it answers at once and resets the
 * stream with NO_ERROR, which tells the client to stop sending (RFC 9113 §8.1).
 */
export interface DrainLimits {
  /** Most bytes read and dropped per request. */
  maxBytes: number;
  /** Longest time spent draining one request. */
  maxMs: number;
  /** A client that sends nothing for this long is waiting for the answer, not sending. */
  quietMs: number;
}

export const DEFAULT_DRAIN: DrainLimits = { maxBytes: 64 * 1024 * 1024, maxMs: 10_000, quietMs: 1_000 };

export interface HttpServer {
  readonly port: number;
  /**
   * Stops accepting and closes idle connections at once. Connections with calls in flight are
   * closed as soon as their last call ends, and cut after graceMs at the latest.
   */
  close(graceMs: number): Promise<void>;
}

/**
 * A server that holds its port but has no handler yet: bind first (so that a port in use fails in
 * milliseconds), open what the handler needs, then serve. Requests that arrive in between wait
 * for serve(); close() refuses them.
 */
export interface BoundServer extends HttpServer {
  /** Starts answering with the handler, also the requests that arrived since bind. Once only. */
  serve(handler: Handler): HttpServer;
}

/**
 * listen() or bind() could not take the address. A StartupError, so main.ts prints its message as
 * one line, e.g. "cannot listen on 127.0.0.1:50051: the address is already in use".
 */
export class ListenError extends StartupError {
  override readonly name = "ListenError";
  /** The system error code: EADDRINUSE, EACCES, EADDRNOTAVAIL, ENOTFOUND or EAI_AGAIN. */
  readonly code: string;
  /** host:port as it was asked for, e.g. 127.0.0.1:50051 or [::1]:50051. */
  readonly address: string;

  constructor(code: string, address: string, reason: string, cause: unknown) {
    super(`cannot listen on ${address}: ${reason}`, { cause });
    this.code = code;
    this.address = address;
  }
}

const LISTEN_FAILURES: Record<string, string> = {
  EADDRINUSE: "the address is already in use",
  EACCES: "permission denied (ports below 1024 need privileges)",
  EADDRNOTAVAIL: "the address is not available on this machine",
  ENOTFOUND: "the host name does not resolve",
  EAI_AGAIN: "the host name could not be resolved",
};

const HTTP2_PREFACE_START = Buffer.from("PRI ");
const FIRST_BYTES_TIMEOUT_MS = 10_000;
const { NGHTTP2_NO_ERROR, NGHTTP2_REFUSED_STREAM } = http2.constants;

/**
 * Serves one handler on one port for every protocol Connect speaks: gRPC needs HTTP/2, browsers'
 * gRPC-Web and Connect often arrive over HTTP/1.1. Under TLS, ALPN picks the protocol. In
 * cleartext there is no ALPN, so the first bytes decide: an HTTP/2 connection with prior knowledge
 * starts with the preface "PRI * HTTP/2.0", which no HTTP/1 request line does.
 *
 * Rejects with a ListenError when the address cannot be taken.
 */
export async function listen(
  handler: Handler,
  options: ListenOptions,
  logger?: HttpLogger,
): Promise<HttpServer> {
  return (await bind(options, logger)).serve(handler);
}

/** Takes the address (rejecting with a ListenError) and returns a server to serve() on later. */
export async function bind(options: ListenOptions, logger?: HttpLogger): Promise<BoundServer> {
  const drain: DrainLimits = { ...DEFAULT_DRAIN, ...options.drain };
  let handler: Handler | undefined;
  const waiting: Array<Parameters<Handler>> = [];
  let closing = false;

  /** Every HTTP/2 session, with its number of open streams. */
  const sessions = new Map<http2.ServerHttp2Session, number>();
  /** Every HTTP/1.1 connection, with its number of requests in progress. */
  const h1Connections = new Map<net.Socket, number>();
  /** Cleartext connections that have not said yet which protocol they speak. */
  const undecided = new Set<net.Socket>();
  const sockets = new Set<net.Socket>();
  /** Requests being drained; calling one stops its drain and answers. */
  const drains = new Set<() => void>();

  const track = (socket: net.Socket) => {
    sockets.add(socket);
    socket.once("close", () => {
      sockets.delete(socket);
      h1Connections.delete(socket);
      undecided.delete(socket);
    });
  };
  /** At shutdown: GOAWAY, and an idle session also closes its connection now. */
  const windDown = (session: http2.ServerHttp2Session) => {
    if (session.destroyed) return;
    if ((sessions.get(session) ?? 0) === 0) session.destroy();
    else session.goaway(NGHTTP2_NO_ERROR);
  };
  const trackSessions = (h2: http2.Http2Server | http2.Http2SecureServer) => {
    h2.on("session", (session) => {
      sessions.set(session, 0);
      session.on("stream", (stream) => {
        sessions.set(session, (sessions.get(session) ?? 0) + 1);
        stream.once("close", () => {
          const open = sessions.get(session);
          if (open === undefined) return;
          sessions.set(session, open - 1);
          // Shutting down: the session's last call is done, so the connection goes now, not when
          // the client gets round to closing it.
          if (closing && open === 1) setImmediate(() => session.destroy());
        });
      });
      session.once("close", () => sessions.delete(session));
      // A TLS handshake that completed during the shutdown.
      if (closing) setImmediate(() => windDown(session));
      // A client that vanishes must not keep its session in our bookkeeping forever.
      session.on("error", (err) => logger?.debug({ err: err.message }, "http2 session error"));
    });
  };
  const trackHttp1Request = (req: http.IncomingMessage, res: http.ServerResponse) => {
    const socket = req.socket;
    h1Connections.set(socket, (h1Connections.get(socket) ?? 0) + 1);
    // A request that raced the shutdown is the last one on its connection.
    if (closing && !res.headersSent) res.setHeader("connection", "close");
    res.once("close", () => {
      const busy = h1Connections.get(socket);
      if (busy === undefined) return;
      h1Connections.set(socket, busy - 1);
      if (closing && busy === 1) socket.destroySoon();
    });
  };

  const dispatch: Handler = (req, res) => {
    if (req instanceof http2.Http2ServerRequest) {
      answerAfterRequestBody(req, res as http2.Http2ServerResponse, drain, drains);
    } else {
      trackHttp1Request(req, res as http.ServerResponse);
    }
    if (handler !== undefined) handler(req, res);
    else waiting.push([req, res]);
  };

  let server: net.Server;
  if (options.tls) {
    const h2 = http2.createSecureServer(
      {
        cert: readFileSync(options.tls.certFile),
        key: readFileSync(options.tls.keyFile),
        allowHTTP1: true,
      },
      dispatch as never,
    );
    trackSessions(h2);
    // The raw socket, so that the grace period also ends connections stuck in the TLS handshake.
    h2.on("connection", track);
    h2.on("secureConnection", (socket: net.Socket & { alpnProtocol?: string | false }) => {
      track(socket);
      if (socket.alpnProtocol !== "h2") h1Connections.set(socket, 0);
    });
    server = h2;
  } else {
    const h2 = http2.createServer({}, dispatch as never);
    trackSessions(h2);
    const h1 = http.createServer(dispatch as never);
    server = net.createServer((socket) => {
      track(socket);
      undecided.add(socket);
      // A connection that never says which protocol it speaks must not hold a socket forever.
      socket.setTimeout(FIRST_BYTES_TIMEOUT_MS, () => socket.destroy());
      let head = Buffer.alloc(0);
      const onData = (chunk: Buffer) => {
        head = Buffer.concat([head, chunk]);
        if (
          head.length < HTTP2_PREFACE_START.length &&
          HTTP2_PREFACE_START.subarray(0, head.length).equals(head)
        ) {
          return; // Too few bytes to tell yet.
        }
        undecided.delete(socket);
        socket.off("data", onData);
        socket.setTimeout(0);
        socket.pause();
        socket.unshift(head);
        if (head.subarray(0, HTTP2_PREFACE_START.length).equals(HTTP2_PREFACE_START)) {
          // The HTTP/2 session replays the socket's buffered bytes on its next tick; resuming the
          // socket here would flow them away first.
          h2.emit("connection", socket);
        } else {
          h1Connections.set(socket, 0);
          h1.emit("connection", socket);
          socket.resume();
        }
      };
      socket.on("data", onData);
      socket.on("error", () => socket.destroy());
    });
  }

  await listenOn(server, options.host, options.port);
  const address = server.address() as net.AddressInfo;

  const shutdown = async (graceMs: number) => {
    closing = true;
    // net.Server's own close: Http2SecureServer.close() would also close every session
    // gracefully, which waits for each client to hang up.
    const closed = new Promise<void>((resolve) => net.Server.prototype.close.call(server, () => resolve()));
    for (const [req, res] of waiting.splice(0)) refuse(req, res);
    for (const socket of undecided) socket.destroy();
    for (const answer of [...drains]) answer();
    for (const session of sessions.keys()) windDown(session);
    for (const [socket, busy] of h1Connections) if (busy === 0) socket.destroy();
    const deadline = setTimeout(() => {
      for (const session of sessions.keys()) session.destroy();
      for (const socket of sockets) socket.destroy();
    }, graceMs);
    await closed;
    clearTimeout(deadline);
  };

  let closed: Promise<void> | undefined;
  const bound: BoundServer = {
    port: address.port,
    serve(next) {
      if (handler !== undefined) throw new Error("this server is already serving");
      if (closing) throw new Error("this server is closed");
      handler = next;
      for (const [req, res] of waiting.splice(0)) next(req, res);
      return bound;
    },
    close(graceMs) {
      closed ??= shutdown(graceMs);
      return closed;
    },
  };
  return bound;
}

async function listenOn(server: net.Server, host: string, port: number): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException) => {
      const reason = err.code === undefined ? undefined : LISTEN_FAILURES[err.code];
      const address = `${host.includes(":") ? `[${host}]` : host}:${port}`;
      reject(
        reason === undefined || err.code === undefined
          ? err
          : new ListenError(err.code, address, reason, err),
      );
    };
    server.once("error", onError);
    server.listen(port, host, () => {
      server.off("error", onError);
      resolve();
    });
  });
}

/** A request that arrived before serve() and is still waiting at close: the client may retry it. */
function refuse(req: Parameters<Handler>[0], res: Parameters<Handler>[1]) {
  if (req instanceof http2.Http2ServerRequest) {
    if (!req.stream.closed) req.stream.close(NGHTTP2_REFUSED_STREAM);
    return;
  }
  const response = res as http.ServerResponse;
  response.writeHead(503, { connection: "close", "retry-after": "1" });
  response.end();
}

/**
 * The answer to an HTTP/2 request whose handler ended the response before the client finished
 * sending the body goes out only after the body, read and dropped.
 *
 * Why: a Node.js client (connect-node, or anything on node:http2) queues a request body in its
 * session, and that queue counts against the session's maxSessionMemory (10 MB by default). A
 * response that arrives while more than that is queued is refused by the client itself with
 * RST_STREAM ENHANCE_YOUR_CALM, so the caller sees INTERNAL instead of RESOURCE_EXHAUSTED. Worse,
 * the bytes a destroyed stream still had queued are never subtracted again, so a connection that
 * saw one 10 MB refusal, or three 4 MB ones, refuses every later response too. Reading the body to
 * its end lets the client's queue drain normally before the answer arrives. A reset alone (NO_ERROR
 * after the response) does not help: the client still discards its queue. It is kept for what the
 * drain does not cover (too much, too long, or a client that waits for the answer before sending
 * more), where it at least tells the client to stop sending.
 *
 * How: while the request is open, writeHead() and write() are held until the end of the current
 * turn of the event loop. A response that ends within it (an error answered without reading the
 * request) waits for the drain; any other is a streaming response and goes out at once, and if it
 * ends while the request is still open, its end waits for the drain.
 */
function answerAfterRequestBody(
  req: http2.Http2ServerRequest,
  res: http2.Http2ServerResponse,
  limits: DrainLimits,
  drains: Set<() => void>,
) {
  const stream = req.stream;
  const bodyRead = () => stream.endAfterHeaders || stream.readableEnded || stream.closed || stream.destroyed;
  if (bodyRead()) return;
  const { writeHead, write, end } = res;
  let held: Array<() => void> | undefined;
  let ending = false;
  /** Back to the real writeHead() and write(), after what was held; end() stays watched. */
  const release = () => {
    res.writeHead = writeHead;
    res.write = write;
    const calls = held ?? [];
    held = undefined;
    for (const call of calls) call();
  };
  const hold = (call: () => void) => {
    if (held === undefined) {
      held = [];
      setImmediate(() => {
        if (!ending) release();
      });
    }
    held.push(call);
  };
  res.writeHead = ((...args: unknown[]) => {
    if (held === undefined && bodyRead()) {
      release();
      return Reflect.apply(writeHead, res, args);
    }
    // Held, headersSent stays false, so a handler may call writeHead() again: the first one wins,
    // as it would have.
    hold(() => {
      if (!res.headersSent) Reflect.apply(writeHead, res, args);
    });
    return res;
  }) as typeof res.writeHead;
  res.write = ((...args: unknown[]) => {
    if (held === undefined && bodyRead()) {
      release();
      return Reflect.apply(write, res, args);
    }
    hold(() => Reflect.apply(write, res, args));
    return true;
  }) as typeof res.write;
  // Also for a streaming response that ends before its request: the client may be sending still.
  res.end = ((...args: unknown[]) => {
    ending = true;
    res.end = end;
    if (bodyRead()) {
      release();
      return Reflect.apply(end, res, args);
    }
    drainRequest(stream, limits, drains, (outcome) => {
      release();
      if (outcome === "cut") {
        // Headers now, so that the answer ends with trailers; the reset goes after them (they
        // are sent on the tick after wantTrailers), not before.
        if (!res.headersSent) Reflect.apply(writeHead, res, [res.statusCode]);
        stream.once("wantTrailers", () =>
          setImmediate(() => {
            if (!stream.closed && !stream.destroyed) stream.close(NGHTTP2_NO_ERROR);
          }),
        );
      }
      Reflect.apply(end, res, args);
    });
    return res;
  }) as typeof res.end;
}

type DrainOutcome = "ended" | "reset" | "cut";

/** Reads and drops what is left of a request body; `done` says how that ended. */
function drainRequest(
  stream: http2.ServerHttp2Stream,
  limits: DrainLimits,
  drains: Set<() => void>,
  done: (outcome: DrainOutcome) => void,
) {
  let bytes = 0;
  let settled = false;
  const finish = (outcome: DrainOutcome) => {
    if (settled) return;
    settled = true;
    clearTimeout(deadline);
    clearTimeout(quiet);
    stream.off("data", onData);
    stream.off("end", onEnd);
    stream.off("close", onClose);
    drains.delete(cut);
    // Stop reading: the client's flow-control window closes, and the reset tells it why.
    if (outcome === "cut") stream.pause();
    done(outcome);
  };
  const onData = (chunk: Buffer) => {
    bytes += chunk.length;
    quiet.refresh();
    if (bytes > limits.maxBytes) finish("cut");
  };
  const onEnd = () => finish("ended");
  const onClose = () => finish("reset");
  const cut = () => finish("cut");
  const deadline = setTimeout(cut, limits.maxMs);
  const quiet = setTimeout(function quietCheck() {
    // Timers run before I/O in a turn of the event loop: let reads that are already waiting land
    // before calling the client quiet (a busy loop must not look like a silent client).
    const seen = bytes;
    setImmediate(() => {
      if (settled) return;
      if (bytes === seen) finish("cut");
      else quiet.refresh();
    });
  }, limits.quietMs);
  // Nothing reads the request any more; Node's compatibility layer would keep pushing into it and
  // pause the stream when the handler has dropped it.
  for (const listener of stream.listeners("data")) stream.off("data", listener as (chunk: Buffer) => void);
  stream.on("data", onData);
  stream.once("end", onEnd);
  stream.once("close", onClose);
  drains.add(cut);
  stream.resume();
}
