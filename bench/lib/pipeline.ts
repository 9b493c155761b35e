/**
 * Pipelined calls: `echo(i)` for i = 0..n-1 with `window` calls outstanding at all times (a new
 * one as each returns); rejects when a call fails or returns something other than its i.
 */
export function pipelined(echo: (i: number) => Promise<number>, n: number, window: number): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let issued = 0;
    let finished = 0;
    const next = (): void => {
      const i = issued++;
      echo(i).then((r) => {
        if (r !== i) return reject(new Error(`echo(${i}) returned ${r}`));
        if (++finished === n) return resolve();
        if (issued < n) next();
      }, reject);
    };
    for (let k = 0; k < Math.min(window, n); k++) next();
  });
}
