import { allEntities, startApp } from "./app.ts";
import { ConfigError, describeConfig, loadConfig, usage } from "./config/index.ts";
import { StartupError } from "./core/errors.ts";
import { createLogger } from "./core/logger.ts";
import { SecretBox } from "./core/secrets.ts";
import { migrate, openDatabase } from "./db/database.ts";
import { reencryptPushConfigs } from "./store/a2a/push-configs.ts";

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
} else if (config.command === "reencrypt-push-configs") {
  const box = new SecretBox(config.tasks.pushConfigKeys);
  if (config.tasks.pushConfigKeys.length === 0) {
    process.stderr.write("agentstore: set AGENTSTORE_PUSH_CONFIG_KEYS (the newest key last) to re-encrypt\n");
    process.exit(2);
  }
  try {
    const db = await openDatabase(config.database.target, { entities: allEntities() });
    try {
      const { reencrypted, failed } = await reencryptPushConfigs(db, box);
      logger.info({ reencrypted, failed, keyId: box.currentKeyId }, "re-encrypted push configs");
      process.stdout.write(
        `re-encrypted ${reencrypted} push configs under key '${box.currentKeyId}'` +
          (failed > 0
            ? `; ${failed} could not be decrypted with the configured keys and were left as they are`
            : "") +
          "\n",
      );
      if (failed > 0) process.exitCode = 1;
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
