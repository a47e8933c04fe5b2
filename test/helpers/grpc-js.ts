import { join } from "node:path";
import { fromBinary } from "@bufbuild/protobuf";
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.ts";
import { StatusSchema } from "../../gen/google/rpc/status_pb.ts";
import { ROOT } from "./servers.ts";

/**
 * A plain @grpc/grpc-js client built at run time from proto/ with @grpc/proto-loader: what a
 * polyglot client sees, with no generated TypeScript and no Connect involved.
 */
const definition = protoLoader.loadSync(
  [
    "agentstore/v1/run_service.proto",
    "agentstore/v1/runner_service.proto",
    "agentstore/v1/session_service.proto",
    "agentstore/v1/queue_service.proto",
    "agentstore/v1/task_service.proto",
    "grpc/health/v1/health.proto",
  ],
  {
    includeDirs: [join(ROOT, "proto"), join(ROOT, "third_party/proto")],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  },
);
const loaded = grpc.loadPackageDefinition(definition) as unknown as {
  agentstore: {
    v1: Record<ServiceName, grpc.ServiceClientConstructor>;
  };
  grpc: { health: { v1: { Health: grpc.ServiceClientConstructor } } };
};

type ServiceName = "RunService" | "RunnerService" | "SessionService" | "QueueService" | "TaskService";

export type GrpcClient = grpc.Client & Record<string, (...args: unknown[]) => unknown>;

export interface GrpcError extends Error {
  code: grpc.status;
  details: string;
  metadata: grpc.Metadata;
}

/** A service of agentstore.v1 over grpc-js; the API key rides as metadata (call credentials demand TLS in grpc-js). */
function grpcService(service: ServiceName, port: number, apiKey?: string): GrpcClient {
  const addKey: grpc.Interceptor = (options, next) =>
    new grpc.InterceptingCall(next(options), {
      start(metadata, listener, start) {
        if (apiKey !== undefined) metadata.set("authorization", `Bearer ${apiKey}`);
        start(metadata, listener);
      },
    });
  return new loaded.agentstore.v1[service](`127.0.0.1:${port}`, grpc.credentials.createInsecure(), {
    interceptors: [addKey],
  }) as GrpcClient;
}

export const grpcRunService = (port: number, apiKey?: string) => grpcService("RunService", port, apiKey);
export const grpcRunnerService = (port: number, apiKey?: string) =>
  grpcService("RunnerService", port, apiKey);
export const grpcSessionService = (port: number, apiKey?: string) =>
  grpcService("SessionService", port, apiKey);
export const grpcQueueService = (port: number, apiKey?: string) => grpcService("QueueService", port, apiKey);
export const grpcTaskService = (port: number, apiKey?: string) => grpcService("TaskService", port, apiKey);

export function grpcHealth(port: number): GrpcClient {
  return new loaded.grpc.health.v1.Health(
    `127.0.0.1:${port}`,
    grpc.credentials.createInsecure(),
  ) as GrpcClient;
}

/** Calls a unary method and resolves with the response or rejects with the grpc-js error. */
export function unary<T = Record<string, unknown>>(
  client: GrpcClient,
  method: string,
  request: unknown,
): Promise<T> {
  return new Promise((resolve, reject) => {
    const fn = client[method];
    if (fn === undefined) throw new Error(`no method ${method}`);
    fn.call(client, request, (err: GrpcError | null, res: T) => (err ? reject(err) : resolve(res)));
  });
}

/** The google.rpc.ErrorInfo reason inside a grpc-js error's grpc-status-details-bin trailer. */
export function errorReason(err: GrpcError): string | undefined {
  const [bin] = err.metadata.get("grpc-status-details-bin");
  if (!(bin instanceof Buffer)) return undefined;
  const status = fromBinary(StatusSchema, bin);
  for (const detail of status.details) {
    const info = anyUnpack(detail, ErrorInfoSchema);
    if (info !== undefined) return info.reason;
  }
  return undefined;
}

/** A JSON object as google.protobuf.Struct in proto-loader's object form. */
export function struct(value: Record<string, unknown>): unknown {
  const toValue = (v: unknown): unknown => {
    if (v === null) return { nullValue: "NULL_VALUE" };
    if (typeof v === "number") return { numberValue: v };
    if (typeof v === "string") return { stringValue: v };
    if (typeof v === "boolean") return { boolValue: v };
    if (Array.isArray(v)) return { listValue: { values: v.map(toValue) } };
    return { structValue: struct(v as Record<string, unknown>) };
  };
  return { fields: Object.fromEntries(Object.entries(value).map(([k, v]) => [k, toValue(v)])) };
}

/** proto-loader's google.protobuf.Struct object form back to plain JSON. */
export function unstruct(value: unknown): Record<string, unknown> {
  type V = { kind?: string; listValue?: { values: V[] }; structValue?: unknown } & Record<string, unknown>;
  const fromValue = (v: V): unknown => {
    if (v.kind === "listValue") return (v.listValue?.values ?? []).map(fromValue);
    if (v.kind === "structValue") return unstruct(v.structValue);
    if (v.kind === "nullValue") return null;
    return v.kind === undefined ? undefined : v[v.kind];
  };
  const fields = (value as { fields?: Record<string, V> })?.fields ?? {};
  return Object.fromEntries(Object.entries(fields).map(([k, v]) => [k, fromValue(v)]));
}
