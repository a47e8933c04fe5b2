import { promises as dns, type LookupAddress } from "node:dns";
import http from "node:http";
import https from "node:https";
import { isIP } from "node:net";
import { isRefusedAddress, type Lookup } from "./outbound-url.ts";

export interface PostOptions {
  /** The whole exchange (lookup, connect, request, answer) ends after this. */
  timeoutMs: number;
  /** Answer bytes read at most; the rest is cut off (only the status matters). */
  maxResponseBytes: number;
  /** Allow loopback, private and link-local addresses (tests, development). */
  allowPrivate: boolean;
  /** The host lookup (tests may replace it). */
  lookup?: Lookup;
}

export type PostOutcome =
  | { ok: true; status: number }
  | {
      ok: false;
      /** The HTTP status, null when there was no answer. */
      status: number | null;
      /** Why, for the delivery history: never the URL's path or query, nor a header. */
      error: string;
      /** Retrying cannot help (a 4xx, a redirect, a refused address). */
      permanent: boolean;
      /** The receiver's Retry-After, when it gave one. */
      retryAfterMs: number | null;
    };

class RefusedAddress extends Error {}

const systemLookup: Lookup = (host) => dns.lookup(host, { all: true, verbatim: true });

/**
 * POSTs a JSON body to a URL a tenant gave (a push notification). The URL was checked when it was
 * stored, but a name may resolve elsewhere since (DNS rebinding), so the addresses are checked
 * again in the lookup the connection itself uses: a connection to a refused address is never
 * made. Redirects are never followed (a 3xx is a permanent failure), and the answer's body is
 * read up to a cap and dropped.
 */
export async function postJson(
  urlText: string,
  body: string,
  headers: Record<string, string>,
  options: PostOptions,
): Promise<PostOutcome> {
  let url: URL;
  try {
    url = new URL(urlText);
  } catch {
    return failure(null, "the url is not an absolute URL", true);
  }
  const host = url.hostname.replace(/^\[(.*)\]$/, "$1");
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    return failure(null, `scheme ${url.protocol} is not http or https`, true);
  }
  if (!options.allowPrivate && isIP(host) !== 0 && isRefusedAddress(host)) {
    return failure(null, `${host} is a loopback, private, link-local or otherwise refused address`, true);
  }
  const resolve = options.lookup ?? systemLookup;
  const guardedLookup = (
    hostname: string,
    lookupOptions: { all?: boolean },
    callback: (err: Error | null, address: string | LookupAddress[], family?: number) => void,
  ) => {
    resolve(hostname).then(
      (found) => {
        const addresses = found.map((a) => ({ address: a.address, family: isIP(a.address) }));
        const refused = options.allowPrivate ? undefined : addresses.find((a) => isRefusedAddress(a.address));
        if (refused !== undefined) {
          callback(
            new RefusedAddress(
              `${hostname} resolves to ${refused.address}, a loopback, private, link-local or otherwise refused address`,
            ),
            "",
          );
        } else if (addresses.length === 0) {
          callback(Object.assign(new Error(`${hostname} does not resolve`), { code: "ENOTFOUND" }), "");
        } else if (lookupOptions.all) {
          callback(null, addresses);
        } else {
          const [first] = addresses;
          callback(null, first?.address ?? "", first?.family);
        }
      },
      (err: Error) => callback(err, ""),
    );
  };
  const payload = Buffer.from(body);
  const signal = AbortSignal.timeout(options.timeoutMs);
  const transport = url.protocol === "https:" ? https : http;
  return new Promise<PostOutcome>((settle) => {
    let request: http.ClientRequest;
    try {
      request = transport.request(
        url,
        {
          method: "POST",
          headers: {
            ...headers,
            "content-type": "application/json",
            "content-length": String(payload.length),
          },
          lookup: guardedLookup as never,
          signal,
          // A fresh connection each time: a pooled socket would skip the address check above.
          agent: false,
        },
        (response) => {
          // The status decides: a 2xx whose body trickles in is delivered, not timed out. The
          // body is read (up to the cap) only so that the connection closes cleanly.
          settle(outcomeOf(response.statusCode ?? 0, response.headers["retry-after"], host));
          let read = 0;
          response.on("data", (chunk: Buffer) => {
            read += chunk.length;
            if (read > options.maxResponseBytes) response.destroy();
          });
          response.on("error", () => {});
        },
      );
    } catch {
      // Node refuses header values with control characters (a token or credentials with a
      // newline): the config can never be sent. The value stays out of the message.
      settle(
        failure(null, "a header value (token or credentials) holds characters HTTP does not allow", true),
      );
      return;
    }
    request.on("error", (err: NodeJS.ErrnoException) => {
      if (err instanceof RefusedAddress) return settle(failure(null, err.message, true));
      if (signal.aborted) return settle(failure(null, `no answer within ${options.timeoutMs} ms`, false));
      settle(failure(null, `${host}: ${err.code ?? err.message}`, false));
    });
    request.end(payload);
  });
}

function outcomeOf(status: number, retryAfter: string | undefined, host: string): PostOutcome {
  if (status >= 200 && status < 300) return { ok: true, status };
  if (status >= 300 && status < 400)
    return failure(status, `${host} answered ${status}; redirects are not followed`, true);
  const retryable = status === 408 || status === 425 || status === 429 || status >= 500;
  return {
    ok: false,
    status,
    error: `${host} answered ${status}`,
    permanent: !retryable,
    retryAfterMs: retryable ? parseRetryAfter(retryAfter) : null,
  };
}

const failure = (status: number | null, error: string, permanent: boolean): PostOutcome => ({
  ok: false,
  status,
  error,
  permanent,
  retryAfterMs: null,
});

/** Retry-After as delta-seconds or an HTTP date; null when absent or unreadable. */
function parseRetryAfter(value: string | undefined): number | null {
  if (value === undefined) return null;
  if (/^\d+$/.test(value.trim())) return Number(value.trim()) * 1000;
  const at = Date.parse(value);
  return Number.isNaN(at) ? null : Math.max(0, at - Date.now());
}
