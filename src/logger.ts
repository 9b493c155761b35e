/**
 * Logging is injected. Any console-like or pino-like object fits {@link Logger}. Off by default;
 * the environment variable `SNAKEMQ_DEBUG=1` turns on a readable debug log on stderr.
 *
 * @module
 */

/** The logger face snakemq calls: each method takes one preformatted message string. */
export interface Logger {
  debug(message: string): void;
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

const noop = (): void => {};

/** A logger that drops everything. */
export const silentLogger: Logger = { debug: noop, info: noop, warn: noop, error: noop };

/** A logger writing `snakemq <level> <component>: <message>` lines to stderr. */
export function stderrLogger(): Logger {
  const line =
    (level: string) =>
    (message: string): void => {
      process.stderr.write(`snakemq ${new Date().toISOString()} ${level} ${message}\n`);
    };
  return { debug: line('debug'), info: line('info'), warn: line('warn'), error: line('error') };
}

/**
 * The logger to use when none was injected: stderr when `SNAKEMQ_DEBUG` is set to something
 * other than `''`/`0`, otherwise silent.
 */
export function defaultLogger(): Logger {
  const v = process.env.SNAKEMQ_DEBUG;
  return v && v !== '0' ? stderrLogger() : silentLogger;
}
