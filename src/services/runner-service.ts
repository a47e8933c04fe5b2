import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import { RunnerState } from "../../gen/agentstore/v1/runner_pb.ts";
import {
  DeregisterRunnerResponseSchema,
  GetRunnerResponseSchema,
  HeartbeatRunnerResponseSchema,
  ListRunnerJobsResponseSchema,
  ListRunnersResponseSchema,
  RecordRunnerJobResponseSchema,
  RegisterRunnerResponseSchema,
  type RunnerService,
} from "../../gen/agentstore/v1/runner_service_pb.ts";
import { tenantOf } from "../server/auth.ts";
import { DEFAULT_STALE_AFTER_MS } from "../store/runners/model.ts";
import type { RunnerStore } from "../store/runners/runners.ts";
import { emptyToNull } from "./run-convert.ts";
import { msFromDuration, runnerJobToProto, runnerToProto } from "./runner-convert.ts";

const lower = (id: string) => id.toLowerCase();

/** RunnerService: map -> store -> map; the tenant from the caller's credentials. */
export function createRunnerService(runners: RunnerStore): ServiceImpl<typeof RunnerService> {
  return {
    async registerRunner(req, ctx) {
      const runner = await runners.register(tenantOf(ctx), {
        id: emptyToNull(req.runnerId),
        labels: req.labels,
        capabilities: req.capabilities,
        version: emptyToNull(req.version),
        backendProfile: emptyToNull(req.backendProfile),
      });
      return create(RegisterRunnerResponseSchema, { runner: runnerToProto(runner) });
    },

    async heartbeatRunner(req, ctx) {
      const leaseMs = req.lease === undefined ? undefined : msFromDuration(req.lease, 0);
      const { runner, renewed } = await runners.heartbeat(tenantOf(ctx), req.runnerId, leaseMs);
      return create(HeartbeatRunnerResponseSchema, {
        runner: runnerToProto(runner),
        renewedRunCount: BigInt(renewed),
      });
    },

    async getRunner(req, ctx) {
      const runner = await runners.get(tenantOf(ctx), req.runnerId, DEFAULT_STALE_AFTER_MS);
      return create(GetRunnerResponseSchema, { runner: runnerToProto(runner) });
    },

    async listRunners(req, ctx) {
      const page = await runners.list(
        tenantOf(ctx),
        {
          state:
            req.state === RunnerState.LIVE ? "live" : req.state === RunnerState.STALE ? "stale" : undefined,
          staleAfterMs: msFromDuration(req.staleAfter, DEFAULT_STALE_AFTER_MS),
          labels: req.labels,
        },
        req,
      );
      return create(ListRunnersResponseSchema, {
        runners: page.items.map(runnerToProto),
        nextPageToken: page.nextPageToken,
      });
    },

    async deregisterRunner(req, ctx) {
      const released = await runners.deregister(tenantOf(ctx), req.runnerId, req.allowMissing);
      return create(DeregisterRunnerResponseSchema, { releasedRunCount: BigInt(released) });
    },

    async recordRunnerJob(req, ctx) {
      const job = await runners.recordJob(
        tenantOf(ctx),
        {
          runId: lower(req.runId),
          commandId: emptyToNull(lower(req.commandId)),
          runnerId: req.runnerId,
          attemptId: emptyToNull(req.attemptId),
          namespace: emptyToNull(req.namespace),
          jobName: emptyToNull(req.jobName),
          managerUrl: emptyToNull(req.managerUrl),
          image: emptyToNull(req.image),
          sourceCommit: emptyToNull(req.sourceCommit),
          serviceAccount: emptyToNull(req.serviceAccount),
          result: req.result ?? {},
        },
        emptyToNull(req.idempotencyKey),
      );
      return create(RecordRunnerJobResponseSchema, { job: runnerJobToProto(job) });
    },

    async listRunnerJobs(req, ctx) {
      const page = await runners.listJobs(
        tenantOf(ctx),
        { runId: lower(req.runId), commandId: emptyToNull(lower(req.commandId)) },
        req,
      );
      return create(ListRunnerJobsResponseSchema, {
        jobs: page.items.map(runnerJobToProto),
        nextPageToken: page.nextPageToken,
      });
    },
  };
}
