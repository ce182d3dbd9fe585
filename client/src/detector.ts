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
    const thr = this.threshold;
    // Where an audible sample lies is all that matters: the first one in the block may be
    // an onset, and the last one sets lastAudible. A later onset in the same block needs a
    // gap no longer than the block, so with the usual gap (0.2 s, blocks of 128 samples)
    // the samples between them are not looked at: speech costs a few comparisons a block.
    let first = -1;
    for (let i = 0; i < n && first < 0; i++) {
      for (let c = 0; c < nch; c++) {
        const v = channels[c]![i]!;
        if (v >= thr || -v >= thr) {
          first = i;
          break;
        }
      }
    }
    if (first < 0) return;
    if (this.gap - 1e-9 <= (n - 1 - first) / sampleRate) {
      // a gap this short can also end inside the block: look at every sample
      for (let i = first; i < n; i++) {
        let a = 0;
        for (let c = 0; c < nch; c++) {
          const v = Math.abs(channels[c]![i]!);
          if (v > a) a = v;
        }
        if (a >= thr) this.audibleAt(start + i / sampleRate, out);
      }
      return;
    }
    this.audibleAt(start + first / sampleRate, out);
    let last = first;
    for (let i = n - 1; i > first && last === first; i--) {
      for (let c = 0; c < nch; c++) {
        const v = channels[c]![i]!;
        if (v >= thr || -v >= thr) {
          last = i;
          break;
        }
      }
    }
    this.lastAudible = start + last / sampleRate;
  }

  /** An audible sample at `t`: an onset when the silence before it lasted `gap` or more. */
  audibleAt(t: number, out: Array<[number, number]>): void {
    const gap = this.lastAudible === null ? 60 : Math.min(t - this.lastAudible, 60);
    if (gap >= this.gap - 1e-9) out.push([t, gap]);
    this.lastAudible = t;
  }
}

/**
 * The envelope that follows an onset, shared with the agent (`encode_envelope` in
 * livekit_segments/client_playout/_detector.py; docs/client-playout.md, "Envelopes"): the RMS
 * amplitude of each 1 ms bin from the onset's first audible sample (sample i is in bin
 * floor(i * 1000 / sampleRate)), one base64url character per bin, in 1.5 dB steps above
 * -96 dBFS. The agent places it in its own audio: WebRTC can leave out the first milliseconds
 * of sound after silence, so the first audible sample here may be later audio than the
 * agent's. Written like OnsetDetector: its source text is also the worklet's.
 */
export class OnsetEnvelope {
  bins: number;
  sampleRate: number;
  sums: number[];
  counts: number[];
  pos: number;
  active: boolean;

  constructor(bins: number, sampleRate: number) {
    this.bins = bins;
    this.sampleRate = sampleRate;
    this.sums = [];
    this.counts = [];
    this.pos = 0;
    this.active = false;
  }

  /** Start a new envelope: its first sample is the onset's. */
  begin(): void {
    this.sums = new Array<number>(this.bins).fill(0);
    this.counts = new Array<number>(this.bins).fill(0);
    this.pos = 0;
    this.active = true;
  }

  /**
   * Consume samples `from` to `n - 1` of a block (no channels: silence); the encoded envelope
   * once its last bin is full, else null.
   */
  feed(channels: ArrayLike<ArrayLike<number>>, from: number, n: number): string | null {
    if (!this.active) return null;
    const nch = channels.length;
    for (let i = from; i < n; i++) {
      const k = Math.floor((this.pos * 1000) / this.sampleRate);
      if (k >= this.bins) break;
      let a = 0;
      for (let c = 0; c < nch; c++) {
        const v = Math.abs(channels[c]![i]!);
        if (v > a) a = v;
      }
      this.sums[k] = this.sums[k]! + a * a;
      this.counts[k] = this.counts[k]! + 1;
      this.pos++;
    }
    return Math.floor((this.pos * 1000) / this.sampleRate) >= this.bins ? this.finish() : null;
  }

  /** End the envelope with the bins filled so far (all of them once complete). */
  finish(): string {
    const abc = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
    let out = '';
    for (let k = 0; k < this.bins && this.counts[k]! > 0; k++) {
      const rms = Math.sqrt(this.sums[k]! / this.counts[k]!);
      const level = rms > 0 ? Math.floor((20 * Math.log10(rms) + 96) / 1.5 + 0.5) : 0;
      out += abc[Math.min(Math.max(level, 0), 63)];
    }
    this.active = false;
    return out;
  }
}

/**
 * The device output's last seconds, for the agent's levels requests (docs/client-playout.md,
 * "Levels"): for each 1 ms bin, the sum of squares (of the loudest channel) and the count of the
 * context frames in it. Bin k holds the frames from ceil(k * rate / 1000) on, so it starts at
 * AudioContext time k ms. `read` gives the RMS of `w` bins at a time, encoded like an
 * envelope's bins: 1.5 dB steps above -96 dBFS, 0 for silence. Written like OnsetDetector:
 * its source text is also the worklet's.
 */
export class LevelRing {
  size: number;
  rate: number;
  sums: Float64Array;
  counts: Uint16Array;
  bin: number;
  sum: number;
  count: number;
  newest: number;

  /** @param size bins kept (ms) */
  constructor(size: number, sampleRate: number) {
    this.size = size;
    this.rate = sampleRate;
    this.sums = new Float64Array(size);
    this.counts = new Uint16Array(size);
    this.bin = -1;
    this.sum = 0;
    this.count = 0;
    this.newest = -1;
  }

  /** Consume a block whose sample 0 is context frame `frame` (no channels: silence). */
  feed(channels: ArrayLike<ArrayLike<number>>, frame: number, n: number): void {
    const nch = channels.length;
    let i = 0;
    while (i < n) {
      const k = Math.floor(((frame + i) * 1000) / this.rate);
      if (k !== this.bin) {
        this.close();
        this.bin = k;
      }
      const end = Math.min(n, Math.ceil(((k + 1) * this.rate) / 1000) - frame);
      let s = 0;
      for (let j = i; j < end; j++) {
        let a = 0;
        for (let c = 0; c < nch; c++) {
          const v = Math.abs(channels[c]![j]!);
          if (v > a) a = v;
        }
        s += a * a;
      }
      this.sum += s;
      this.count += end - i;
      i = end;
    }
  }

  /** The bin being filled is complete: store it. */
  close(): void {
    if (this.bin >= 0 && this.count > 0) {
      this.sums[this.bin % this.size] = this.sum;
      this.counts[this.bin % this.size] = this.count;
      this.newest = this.bin;
    }
    this.sum = 0;
    this.count = 0;
  }

  /**
   * Up to `n` levels of `w` ms each, the first starting at bin `from` or at the first whole
   * `w` ms after it that is kept; only complete bins: [first bin, encoded], or null.
   */
  read(from: number, n: number, w = 1): [number, string] | null {
    const abc = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
    if (this.newest < 0) return null;
    const oldest = Math.max(this.newest - this.size + 1, 0);
    const a = from + Math.max(0, Math.ceil((oldest - from) / w)) * w;
    const m = Math.min(n - (a - from) / w, Math.floor((this.newest - a + 1) / w));
    if (m <= 0) return null;
    let out = '';
    for (let j = 0; j < m; j++) {
      let s = 0;
      let c = 0;
      for (let k = a + j * w; k < a + (j + 1) * w; k++) {
        s += this.sums[k % this.size]!;
        c += this.counts[k % this.size]!;
      }
      const rms = c > 0 ? Math.sqrt(s / c) : 0;
      const level = rms > 0 ? Math.floor((20 * Math.log10(rms) + 96) / 1.5 + 0.5) : 0;
      out += abc[Math.min(Math.max(level, 0), 63)];
    }
    return [a, out];
  }
}
