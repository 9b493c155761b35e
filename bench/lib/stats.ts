/** Small statistics helpers. */

/** Median of a list of numbers (NaN for an empty list). */
export function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Percentile by nearest rank, p in 0..100. */
export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

/** Latency summary in microseconds of round trips given in milliseconds. */
export function latencyStats(latMs: Float64Array): { median_us: number; p99_us: number; mean_us: number } {
  const s = Float64Array.from(latMs).sort();
  let sum = 0;
  for (const x of s) sum += x;
  return {
    median_us: percentile(s, 50) * 1000,
    p99_us: percentile(s, 99) * 1000,
    mean_us: (sum / Math.max(1, s.length)) * 1000,
  };
}

/** A figure measured over several runs. */
export interface Figure {
  unit: string;
  median: number;
  min: number;
  max: number;
  runs: number[];
}

export function figure(unit: string, runs: number[]): Figure {
  return { unit, median: median(runs), min: Math.min(...runs), max: Math.max(...runs), runs };
}
