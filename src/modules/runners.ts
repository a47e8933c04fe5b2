import { RunnerService } from "../../gen/agentstore/v1/runner_service_pb.ts";
import { createRunnerService } from "../services/runner-service.ts";
import { runnerEntities } from "../store/runners/entities.ts";
import { RunnerStore } from "../store/runners/runners.ts";
import type { Module } from "./module.ts";

/** RunnerService: runners (registration, heartbeats, liveness) and the jobs they launch. */
export const runnersModule: Module = {
  name: "runners",
  entities: runnerEntities,
  mount({ config, db, uow, paging }) {
    const runners = new RunnerStore(db, uow, paging, config.runs.limits.maxEventBytes);
    return {
      services: [RunnerService],
      routes: (router) => router.service(RunnerService, createRunnerService(runners)),
      hubs: new Map(),
    };
  },
};
