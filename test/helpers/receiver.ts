import http from "node:http";
import type net from "node:net";

/**
 * A local HTTP receiver of push notifications (a webhook) for the tests: it records what it is
 * sent, with the delivery's seq and id from agentstore's headers, and answers as told (200 by
 * default; "hold" never answers).
 */
export interface Received {
  path: string;
  seq: number;
  deliveryId: string;
  headers: http.IncomingHttpHeaders;
  body: Record<string, unknown>;
}

export type Answer = number | "hold" | { status: number; headers?: Record<string, string>; body?: string };

/** A local HTTP receiver that records what it is sent and answers as told (200 by default). */
export class Receiver {
  readonly received: Received[] = [];
  /** Answers the other side stopped reading before they were all sent. */
  cutOff = 0;
  answer: (r: Received) => Answer = () => 200;
  readonly #held: http.ServerResponse[] = [];
  readonly #server: http.Server;
  port = 0;

  constructor() {
    this.#server = http.createServer((req, res) => {
      let text = "";
      req.on("data", (chunk) => {
        text += chunk;
      });
      req.on("end", () => {
        const r: Received = {
          path: req.url ?? "",
          seq: Number(req.headers["a2a-notification-seq"]),
          deliveryId: String(req.headers["a2a-delivery-id"]),
          headers: req.headers,
          body: JSON.parse(text) as Record<string, unknown>,
        };
        this.received.push(r);
        const answer = this.answer(r);
        if (answer === "hold") {
          this.#held.push(res);
          return;
        }
        const { status, headers, body } = typeof answer === "number" ? { status: answer } : answer;
        res.on("close", () => {
          if (!res.writableFinished) this.cutOff++;
        });
        res.writeHead(status, headers).end(body ?? "{}");
      });
    });
  }

  async listen(port = 0): Promise<this> {
    await new Promise<void>((resolve, reject) => {
      this.#server.once("error", reject);
      this.#server.listen(port, "127.0.0.1", resolve);
    });
    this.port = (this.#server.address() as net.AddressInfo).port;
    return this;
  }

  url(path: string): string {
    return `http://127.0.0.1:${this.port}${path}`;
  }

  /** Seqs received on a path, in arrival order. */
  seqs(path: string): number[] {
    return this.received.filter((r) => r.path === path).map((r) => r.seq);
  }

  async close(): Promise<void> {
    for (const res of this.#held) res.destroy();
    this.#server.closeAllConnections();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}
