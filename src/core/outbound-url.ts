import { promises as dns } from "node:dns";
import { BlockList, isIP } from "node:net";
import { DomainError, invalidArgument } from "./errors.ts";

/**
 * Outbound requests (push notifications) are a security boundary: a tenant must not make the
 * server call itself, its neighbours or the cloud metadata service. Addresses are matched with
 * net.BlockList, which also matches IPv4-mapped IPv6 forms (::ffff:127.0.0.1) against IPv4 rules.
 */
const REFUSED = new BlockList();
for (const [net, prefix] of [
  ["0.0.0.0", 8], // unspecified, "this network"
  ["10.0.0.0", 8], // private
  ["100.64.0.0", 10], // carrier-grade NAT
  ["127.0.0.0", 8], // loopback
  ["169.254.0.0", 16], // link-local, incl. 169.254.169.254 (metadata)
  ["172.16.0.0", 12], // private
  ["192.0.0.0", 24], // IETF protocol assignments
  ["192.168.0.0", 16], // private
  ["198.18.0.0", 15], // benchmarking
  ["224.0.0.0", 4], // multicast
  ["240.0.0.0", 4], // reserved, broadcast
] as const) {
  REFUSED.addSubnet(net, prefix, "ipv4");
}
for (const [net, prefix] of [
  ["::", 128], // unspecified
  ["::1", 128], // loopback
  // IPv6 forms that carry an IPv4 address (::ffff:a.b.c.d is matched against the IPv4 rules by
  // BlockList itself): behind a NAT64 or a 6to4 relay they reach whatever the IPv4 address is,
  // private and metadata addresses included.
  ["::", 96], // IPv4-compatible (deprecated)
  ["64:ff9b::", 96], // NAT64, well-known prefix
  ["64:ff9b:1::", 48], // NAT64, local use
  ["2002::", 16], // 6to4
  ["100::", 64], // discard-only
  ["fc00::", 7], // unique local (private)
  ["fec0::", 10], // site-local (deprecated, private)
  ["fe80::", 10], // link-local
  ["ff00::", 8], // multicast
] as const) {
  REFUSED.addSubnet(net, prefix, "ipv6");
}

/** Whether an address is one outbound requests never go to (unless allowed). */
export function isRefusedAddress(address: string): boolean {
  const family = isIP(address);
  if (family === 0) return true;
  return REFUSED.check(address, family === 4 ? "ipv4" : "ipv6");
}

const refused = (host: string, why: string) =>
  invalidArgument("PUSH_URL_REFUSED", `push url refused: ${why}`, { host });

export type Lookup = (host: string) => Promise<Array<{ address: string }>>;

const systemLookup: Lookup = (host) => dns.lookup(host, { all: true, verbatim: true });

/**
 * Checks a URL a notification would be sent to: absolute http(s), and (unless allowPrivate) a
 * host whose every address is public. The URL itself never goes into the error (it may carry a
 * secret in its query); the host does. A host may resolve elsewhere later (DNS rebinding): whoever
 * sends must check the address it connects to again.
 */
export async function checkOutboundUrl(
  text: string,
  options: { allowPrivate: boolean; lookup?: Lookup },
): Promise<void> {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw refused("", "not an absolute URL");
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw refused(url.hostname, `scheme ${url.protocol.replace(/:$/, "")} (only http and https)`);
  }
  const host = url.hostname.replace(/^\[(.*)\]$/, "$1");
  if (host === "") throw refused("", "no host");
  // They would be stored in plain text and sent as Basic auth: authentication is the place.
  if (url.username !== "" || url.password !== "") {
    throw refused(host, "credentials in the URL (user:password@); put them in the config's authentication");
  }
  if (options.allowPrivate) return;
  let addresses: Array<{ address: string }>;
  if (isIP(host) !== 0) {
    addresses = [{ address: host }];
  } else {
    try {
      addresses = await (options.lookup ?? systemLookup)(host);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "ENOTFOUND" || code === "ENODATA") throw refused(host, `host ${host} does not resolve`);
      throw new DomainError("UNAVAILABLE", "PUSH_URL_LOOKUP_FAILED", `could not look up host ${host}`, {
        host,
      });
    }
  }
  if (addresses.length === 0) throw refused(host, `host ${host} does not resolve`);
  const bad = addresses.find((a) => isRefusedAddress(a.address));
  if (bad !== undefined) {
    throw refused(
      host,
      `host ${host} resolves to ${bad.address}, a loopback, private, link-local or otherwise non-public address`,
    );
  }
}
