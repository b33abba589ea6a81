import { Presets, SingleBar } from 'cli-progress';

/**
 * A progress bar for writing a model's weights (tensor by tensor) on a terminal; elsewhere
 * (logs, tests) one line at each quarter, so a long import is visibly alive without flooding.
 */
export function weightProgress(label: string): { onProgress: (done: number, total: number) => void; stop: () => void } {
  if (process.stderr.isTTY) {
    const bar = new SingleBar({ stream: process.stderr, format: `${label} [{bar}] {value}/{total} tensors | {eta_formatted} left`, etaBuffer: 32 }, Presets.shades_classic);
    let started = false;
    return {
      onProgress: (done, total) => {
        if (!started) {
          bar.start(total, done);
          started = true;
        } else bar.update(done);
      },
      stop: () => {
        if (started) bar.stop();
      },
    };
  }
  let shown = -1;
  return {
    onProgress: (done, total) => {
      const quarter = Math.floor((4 * done) / Math.max(1, total));
      if (quarter > shown) {
        shown = quarter;
        process.stderr.write(`${label}: ${done}/${total} tensors\n`);
      }
    },
    stop: () => {},
  };
}
