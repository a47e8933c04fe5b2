import { pino } from "pino";

export type Logger = pino.Logger;

/**
 * JSON logs on stdout. Pino's redaction is a second line of defence: the code never hands it a key
 * or a password on purpose, but headers and URLs that slip into a log object are censored anyway.
 */
export function createLogger(level: string): Logger {
  return pino({
    level,
    base: { service: "agentstore" },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
    redact: {
      paths: [
        "authorization",
        "*.authorization",
        "headers.authorization",
        "apiKey",
        "*.apiKey",
        "password",
        "*.password",
        "databaseUrl",
        "*.databaseUrl",
      ],
      censor: "[REDACTED]",
    },
  });
}
