/**
 * The onset detector shared with the agent (livekit_segments/client_playout/_detector.py) and
 * the e2e harness; docs/client-playout.md defines it. Written without class fields, imports or
 * helpers: its source text is also the AudioWorklet's (see worklet.ts).
 */
export class OnsetDetector {
  threshold: number;
  gap: number;
  lastAudible: number | null;

  /**
   * @param threshold a sample is audible when its largest |x| over channels is >= this
   * @param gap seconds without an audible sample that must precede an onset
   */
  constructor(threshold: number, gap: number) {
    this.threshold = threshold;
    this.gap = gap;
    this.lastAudible = null;
  }

  /**
   * Consume one block whose sample 0 plays at `start` (seconds); push `[time, gap]` of each
   * onset in it to `out`. The first onset ever has the maximal gap, 60 s.
   */
  feed(
    channels: ArrayLike<ArrayLike<number>>,
    start: number,
    sampleRate: number,
    out: Array<[number, number]>,
  ): void {
    const nch = channels.length;
    if (nch === 0) return;
    const n = channels[0]!.length;
    for (let i = 0; i < n; i++) {
      let a = 0;
      for (let c = 0; c < nch; c++) {
        const v = Math.abs(channels[c]![i]!);
        if (v > a) a = v;
      }
      if (a >= this.threshold) {
        const t = start + i / sampleRate;
        const gap = this.lastAudible === null ? 60 : Math.min(t - this.lastAudible, 60);
        if (gap >= this.gap - 1e-9) out.push([t, gap]);
        this.lastAudible = t;
      }
    }
  }
}
