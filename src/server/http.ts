import { readFileSync } from "node:fs";
import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import type { Logger } from "../core/logger.ts";

type Handler = (
  req: http.IncomingMessage | http2.Http2ServerRequest,
  res: http.ServerResponse | http2.Http2ServerResponse,
) => void;

export interface HttpServer {
  readonly port: number;
  /** Stops accepting, asks clients to go away, waits up to graceMs, then cuts what is left. */
  close(graceMs: number): Promise<void>;
}

const HTTP2_PREFACE_START = Buffer.from("PRI ");
const FIRST_BYTES_TIMEOUT_MS = 10_000;

/**
 * Serves one handler on one port for every protocol Connect speaks: gRPC needs HTTP/2, browsers'
 * gRPC-Web and Connect often arrive over HTTP/1.1. Under TLS, ALPN picks the protocol. In
 * cleartext there is no ALPN, so the first bytes decide: an HTTP/2 connection with prior knowledge
 * starts with the preface "PRI * HTTP/2.0", which no HTTP/1 request line does.
 */
export async function listen(
  handler: Handler,
  options: { host: string; port: number; tls?: { certFile: string; keyFile: string } },
  logger: Logger,
): Promise<HttpServer> {
  const sessions = new Set<http2.ServerHttp2Session>();
  const sockets = new Set<net.Socket>();
  let server: net.Server;
  let h1: http.Server | undefined;

  const track = (socket: net.Socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
  };
  const trackSessions = (h2: http2.Http2Server | http2.Http2SecureServer) => {
    h2.on("session", (session) => {
      sessions.add(session);
      session.once("close", () => sessions.delete(session));
      // A client that vanishes must not keep its session in our bookkeeping forever.
      session.on("error", (err) => logger.debug({ err: err.message }, "http2 session error"));
    });
  };

  if (options.tls) {
    const h2 = http2.createSecureServer(
      {
        cert: readFileSync(options.tls.certFile),
        key: readFileSync(options.tls.keyFile),
        allowHTTP1: true,
      },
      handler as never,
    );
    trackSessions(h2);
    h2.on("secureConnection", track);
    server = h2;
  } else {
    const h2 = http2.createServer({}, handler as never);
    trackSessions(h2);
    h1 = http.createServer(handler as never);
    const h1Server = h1;
    server = net.createServer((socket) => {
      track(socket);
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
        socket.off("data", onData);
        socket.setTimeout(0);
        socket.pause();
        socket.unshift(head);
        if (head.subarray(0, HTTP2_PREFACE_START.length).equals(HTTP2_PREFACE_START)) {
          // The HTTP/2 session replays the socket's buffered bytes on its next tick; resuming the
          // socket here would flow them away first.
          h2.emit("connection", socket);
        } else {
          h1Server.emit("connection", socket);
          socket.resume();
        }
      };
      socket.on("data", onData);
      socket.on("error", () => socket.destroy());
    });
  }

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port, options.host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const address = server.address() as net.AddressInfo;

  return {
    port: address.port,
    async close(graceMs) {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      // GOAWAY: clients finish what is in flight and open no new streams here.
      for (const session of sessions) session.close();
      h1?.closeIdleConnections();
      const deadline = setTimeout(() => {
        for (const session of sessions) session.destroy();
        for (const socket of sockets) socket.destroy();
      }, graceMs);
      await closed;
      clearTimeout(deadline);
    },
  };
}
