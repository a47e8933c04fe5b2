import { createHash, timingSafeEqual } from "node:crypto";
import { Code, createContextKey, type HandlerContext } from "@connectrpc/connect";
import { DEFAULT_TENANT } from "../config/index.ts";
import { connectError } from "./errors.ts";

/** The caller's tenant, set by the auth gate for every call to an agentstore service. */
export const tenantKey = createContextKey<string | undefined>(undefined, { description: "tenant" });

/**
 * The tenant of the start-up warm-up's calls (app.ts). No API key can name it: configured tenant
 * names start with a letter or digit.
 */
export const WARMUP_TENANT = "_warmup";

/** Health and reflection answer without credentials: load balancers and `buf curl --list-services` need them. */
const PUBLIC_SERVICES = new Set([
  "grpc.health.v1.Health",
  "grpc.reflection.v1.ServerReflection",
  "grpc.reflection.v1alpha.ServerReflection",
]);

/**
 * Resolves `authorization: Bearer <key>` to a tenant before the request body is read. Keys are
 * compared by their SHA-256 digests in constant time, so response timing says nothing about how
 * much of a guessed key was right. With no keys configured every caller is the default tenant
 * (config refuses that setup on a non-loopback address).
 */
export function createAuthGate(apiKeys: ReadonlyMap<string, string>) {
  const digests = [...apiKeys].map(([key, tenant]) => ({ digest: sha256(key), tenant }));
  return (ctx: HandlerContext): void => {
    if (PUBLIC_SERVICES.has(ctx.service.typeName)) return;
    if (digests.length === 0) {
      ctx.values.set(tenantKey, DEFAULT_TENANT);
      return;
    }
    const header = ctx.requestHeader.get("authorization") ?? "";
    const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
    if (match?.[1] === undefined) {
      throw connectError(
        Code.Unauthenticated,
        "MISSING_API_KEY",
        "send an API key as 'authorization: Bearer <key>'",
      );
    }
    const presented = sha256(match[1]);
    let tenant: string | undefined;
    for (const entry of digests) {
      if (timingSafeEqual(entry.digest, presented)) tenant = entry.tenant;
    }
    if (tenant === undefined) {
      throw connectError(Code.Unauthenticated, "INVALID_API_KEY", "the API key is not valid");
    }
    ctx.values.set(tenantKey, tenant);
  };
}

/** The caller's tenant; every agentstore handler calls this first. */
export function tenantOf(ctx: HandlerContext): string {
  const tenant = ctx.values.get(tenantKey);
  if (tenant === undefined) throw new Error("auth gate did not run for this call");
  return tenant;
}

function sha256(value: string): Buffer {
  return createHash("sha256").update(value).digest();
}
