/** Await events instead of sleeping. */
type AnyEmitter = {
  on(event: string, handler: (...args: any[]) => void): unknown;
  off(event: string, handler: (...args: any[]) => void): unknown;
};

/**
 * Resolve with the arguments of the first `event` for which `filter` returns true; reject
 * after `timeoutMs` (a test failure, never a pass).
 */
export function waitFor<A extends unknown[] = any[]>(
  emitter: AnyEmitter,
  event: string,
  filter: (...args: A) => boolean = () => true,
  timeoutMs = 10_000,
): Promise<A> {
  return new Promise((resolve, reject) => {
    const handler = (...args: any[]): void => {
      if (!filter(...(args as A))) return;
      clearTimeout(timer);
      emitter.off(event, handler);
      resolve(args as A);
    };
    const timer = setTimeout(() => {
      emitter.off(event, handler);
      reject(new Error(`timed out after ${timeoutMs} ms waiting for '${event}'`));
    }, timeoutMs);
    emitter.on(event, handler);
  });
}

/** Poll `cond` every few ms until true; reject after `timeoutMs`. */
export async function until(cond: () => boolean, timeoutMs = 10_000, what = 'condition'): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/**
 * Make `obj[method]` (an async method) wait until the returned function is called, then do what
 * it did: a storage whose load is slow, for instance.
 */
export function holdUntilReleased<T extends object, K extends keyof T>(obj: T, method: K): () => void {
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const original = (obj[method] as (...args: unknown[]) => Promise<unknown>).bind(obj);
  (obj as Record<K, unknown>)[method] = async (...args: unknown[]) => {
    await gate;
    return original(...args);
  };
  return release;
}
