import { z } from "zod";

/**
 * One setting: an environment variable, the command-line flag that overrides it, and how its text
 * is parsed. `secret` settings are never echoed, not in errors, not in logs: the flag is explicit
 * so that a new secret is protected by saying so, not by happening to have "KEY" in its name.
 */
export interface Setting<T = unknown> {
  readonly env: string;
  readonly flag: string;
  readonly help: string;
  readonly schema: z.ZodType<T>;
  /** The text used when neither the flag nor the variable is set; none means "unset". */
  readonly fallback?: string;
  readonly secret?: boolean;
}

/** The settings of one module, by name. */
export type SettingGroup = Record<string, Setting>;

export type GroupValues<G extends SettingGroup> = {
  [K in keyof G]: G[K] extends Setting<infer T> ? T : never;
};

export const setting = <T>(s: Setting<T>): Setting<T> => s;

export const positiveInt = z.coerce.number().int().positive();
export const nonNegativeInt = z.coerce.number().int().nonnegative();
export const bool = z
  .enum(["true", "false", "1", "0", "yes", "no", "on", "off"])
  .transform((v) => ["true", "1", "yes", "on"].includes(v));
export const optionalText = z.string().optional();

/**
 * Reads every setting of a group from the parsed flags, then the environment, then the fallback.
 * Problems are collected rather than thrown so that one start reports every bad value at once.
 */
export function readGroup<G extends SettingGroup>(
  group: G,
  flags: Record<string, unknown>,
  env: NodeJS.ProcessEnv,
  problems: string[],
): GroupValues<G> {
  const values: Record<string, unknown> = {};
  for (const [name, s] of Object.entries(group)) {
    const fromFlag = flags[s.flag];
    const raw = typeof fromFlag === "string" ? fromFlag : (env[s.env] ?? s.fallback);
    const text = raw === "" && s.fallback === undefined ? undefined : raw;
    const result = s.schema.safeParse(text);
    if (result.success) {
      values[name] = result.data;
    } else {
      const shown = s.secret ? "(secret, not shown)" : `'${text}'`;
      problems.push(`${s.env} / --${s.flag}: ${result.error.issues[0]?.message ?? "invalid"}, got ${shown}`);
    }
  }
  return values as GroupValues<G>;
}
