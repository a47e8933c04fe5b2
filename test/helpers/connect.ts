import type { DescService } from "@bufbuild/protobuf";
import { type Client, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";

/**
 * A Connect client of one service over gRPC (HTTP/2) on a connection of its own, with the API key
 * as a bearer token; close() drops the connection.
 */
export function serviceClient<S extends DescService>(
  service: S,
  baseUrl: string,
  apiKey?: string,
): { client: Client<S>; close(): void } {
  const auth: Interceptor = (next) => (req) => {
    if (apiKey !== undefined) req.header.set("authorization", `Bearer ${apiKey}`);
    return next(req);
  };
  const sessionManager = new Http2SessionManager(baseUrl, { pingIntervalMs: 15_000 });
  const transport = createGrpcTransport({ baseUrl, interceptors: [auth], sessionManager });
  return { client: createClient(service, transport), close: () => sessionManager.abort() };
}
