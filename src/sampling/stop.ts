export interface StopPushResult {
  /** Text that is now safe to send to the client. */
  emit: string;
  /** A stop sequence matched; generation should end and further pushes are ignored. */
  stopped: boolean;
}

/**
 * Incremental stop-sequence matcher over the completion text (OpenAI semantics: output ends right
 * before the first stop sequence, which itself is never sent).
 *
 * Only the longest suffix that could still grow into a stop sequence is held back, so streaming
 * latency is unaffected except while a partial match is pending. Stops are checked after every
 * push, as generation would: once any stop sequence appears, generation ends there, even if a
 * longer stop sequence beginning earlier might have completed with more text.
 */
export class StopMatcher {
  private readonly stops: readonly string[];
  private held = '';
  private done = false;

  constructor(stop: readonly string[]) {
    this.stops = stop.filter((s) => s.length > 0);
  }

  get stopped(): boolean {
    return this.done;
  }

  /**
   * With `check` false (min_tokens not reached yet) the text passes unmatched, as vLLM checks
   * stop strings only once a request has its minimum number of tokens.
   */
  push(text: string, check = true): StopPushResult {
    if (this.done) return { emit: '', stopped: true };
    const stops = this.stops;
    if (stops.length === 0) return { emit: text, stopped: false };
    if (!check) {
      const all = this.held + text;
      this.held = '';
      return { emit: all, stopped: false };
    }
    const s = this.held.length === 0 ? text : this.held + text;

    let cut = -1;
    for (let k = 0; k < stops.length; k++) {
      const idx = s.indexOf(stops[k]!);
      if (idx >= 0 && (cut < 0 || idx < cut)) cut = idx;
    }
    if (cut >= 0) {
      this.done = true;
      this.held = '';
      return { emit: s.slice(0, cut), stopped: true };
    }

    // A stop can only match in the future if it starts inside a suffix of s that is one of its
    // proper prefixes; the longest such suffix covers every later-starting candidate too.
    let hold = 0;
    for (let k = 0; k < stops.length; k++) {
      const st = stops[k]!;
      for (let len = Math.min(st.length - 1, s.length); len > hold; len--) {
        if (endsWithPrefix(s, st, len)) {
          hold = len;
          break;
        }
      }
    }
    if (hold === 0) {
      this.held = '';
      return { emit: s, stopped: false };
    }
    const split = s.length - hold;
    this.held = s.slice(split);
    return { emit: s.slice(0, split), stopped: false };
  }

  /** Releases held-back text once generation ends without a stop match. */
  flush(): string {
    const out = this.held;
    this.held = '';
    return this.done ? '' : out;
  }
}

/** Whether s ends with stop[0 .. len), compared in place to avoid a substring per check. */
function endsWithPrefix(s: string, stop: string, len: number): boolean {
  const base = s.length - len;
  for (let j = 0; j < len; j++) {
    if (s.charCodeAt(base + j) !== stop.charCodeAt(j)) return false;
  }
  return true;
}
