import { allEntities, startApp } from "./app.ts";
import { ConfigError, describeConfig, loadConfig, usage } from "./config/index.ts";
import { StartupError } from "./core/errors.ts";
import { createLogger } from "./core/logger.ts";
import { migrate, openDatabase } from "./db/database.ts";

let config: ReturnType<typeof loadConfig>;
try {
  config = loadConfig(process.argv.slice(2), process.env);
} catch (err) {
  if (!(err instanceof ConfigError)) throw err;
  process.stderr.write(`agentstore: ${err.message}\n`);
  process.exit(2);
}
if (config === "help") {
  process.stdout.write(`${usage()}\n`);
  process.exit(0);
}

const logger = createLogger(config.server.logLevel);
logger.info({ config: describeConfig(config) }, "starting");

/** An operator's problem (port in use, database unreachable) is one line; anything else a stack. */
function fail(err: unknown): never {
  if (err instanceof StartupError) {
    logger.fatal({ reason: err.message }, "could not start");
    process.stderr.write(`agentstore: ${err.message}\n`);
  } else {
    logger.fatal({ err }, "could not start");
  }
  process.exit(1);
}

if (config.command === "migrate") {
  try {
    const db = await openDatabase(config.database.target, {
      entities: allEntities(),
      createMissingDatabase: true,
    });
    try {
      const applied = await migrate(db);
      logger.info(
        { migrations: applied },
        applied.length > 0 ? "applied migrations" : "database is up to date",
      );
    } finally {
      await db.close();
    }
  } catch (err) {
    fail(err);
  }
} else {
  const app = await startApp(config, logger).catch(fail);
  let signals = 0;
  const stop = (signal: string) => {
    if (++signals > 1) {
      logger.warn({ signal }, "second signal: exiting now");
      process.exit(1);
    }
    logger.info({ signal }, "shutting down");
    app.close().then(
      () => process.exit(0),
      (err: unknown) => {
        logger.error({ err }, "unclean shutdown");
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
}
