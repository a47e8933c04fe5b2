import { create } from "@bufbuild/protobuf";
import { type Duration, timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  type RunnerJob as RunnerJobProto,
  RunnerJobSchema,
  type Runner as RunnerProto,
  RunnerSchema,
  RunnerState,
} from "../../gen/agentstore/v1/runner_pb.ts";
import type { Runner, RunnerJob } from "../store/runners/model.ts";

/** Proto ⇄ domain for RunnerService. */

export function runnerToProto(runner: Runner): RunnerProto {
  return create(RunnerSchema, {
    runnerId: runner.id,
    labels: runner.labels,
    capabilities: runner.capabilities,
    version: runner.version ?? "",
    backendProfile: runner.backendProfile ?? "",
    state: runner.live ? RunnerState.LIVE : RunnerState.STALE,
    createTime: timestampFromDate(runner.registeredAt),
    heartbeatTime: timestampFromDate(runner.heartbeatAt),
    heldRunCount: BigInt(runner.heldRuns),
  });
}

export function runnerJobToProto(job: RunnerJob): RunnerJobProto {
  return create(RunnerJobSchema, {
    jobId: job.id,
    runId: job.runId,
    commandId: job.commandId ?? "",
    runnerId: job.runnerId,
    attemptId: job.attemptId ?? "",
    namespace: job.namespace ?? "",
    jobName: job.jobName ?? "",
    managerUrl: job.managerUrl ?? "",
    image: job.image ?? "",
    sourceCommit: job.sourceCommit ?? "",
    serviceAccount: job.serviceAccount ?? "",
    result: job.result as RunnerJobProto["result"],
    idempotencyKey: job.idempotencyKey ?? "",
    createTime: timestampFromDate(job.createdAt),
  });
}

/** A Duration as milliseconds (the request guard has bounded it), or the fallback when unset. */
export function msFromDuration(value: Duration | undefined, fallbackMs: number): number {
  if (value === undefined) return fallbackMs;
  return Number(value.seconds) * 1000 + Math.floor(value.nanos / 1e6);
}
