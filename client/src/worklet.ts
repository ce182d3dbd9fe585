import { LevelRing, OnsetDetector, OnsetEnvelope } from './detector.js';

/** The AudioWorkletProcessor's registered name. */
export const PROCESSOR_NAME = 'lkseg-onset';

/**
 * Source of the AudioWorklet module: passes audio through unchanged and posts
 * `{type: 'onset', t, gap, env?}` (AudioContext seconds) for each onset; with `envBins` > 0,
 * once its envelope is complete (`env`: OnsetEnvelope's encoding). With `levelBins` > 0 it
 * keeps that many ms of levels (LevelRing) and answers `{type: 'levels', id, from, n, w}`
 * with `{type: 'levels', id, from, lv}` (`from` null: none kept). The detector, envelope and
 * ring are their classes' own source text, so worklet and unit tests run the same code;
 * they are taken as class expressions, so a minifier renaming the classes changes nothing.
 */
export function workletSource(): string {
  return `const Detector = (${OnsetDetector.toString()});
const Envelope = (${OnsetEnvelope.toString()});
const Ring = (${LevelRing.toString()});
class LkSegOnsetProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const p = (options && options.processorOptions) || {};
    this.det = new Detector(p.threshold ?? 0.01, p.gap ?? 0.2);
    this.env = new Envelope(p.envBins ?? 0, sampleRate);
    this.ring = p.levelBins > 0 ? new Ring(p.levelBins, sampleRate) : null;
    this.waiting = null; // the onset whose envelope is being filled
    this.out = [];
    this.stopped = false;
    this.port.onmessage = (e) => {
      const m = e.data || {};
      if (m.type === 'params') { this.det.threshold = m.threshold; this.det.gap = m.gap; }
      else if (m.type === 'stop') { this.stopped = true; }
      else if (m.type === 'levels') {
        const r = this.ring ? this.ring.read(m.from, m.n, m.w || 1) : null;
        this.port.postMessage({ type: 'levels', id: m.id, from: r ? r[0] : null, lv: r ? r[1] : '' });
      }
    };
  }
  post(t, gap, env) {
    this.port.postMessage(env === null ? { type: 'onset', t, gap } : { type: 'onset', t, gap, env });
  }
  process(inputs, outputs) {
    const input = inputs[0];
    const output = outputs[0];
    const n = output && output[0] ? output[0].length : 128;
    if (this.ring) this.ring.feed(input || [], currentFrame, n);
    if (this.waiting) {
      // the envelope so far continues through this block (silence where no input came)
      const env = this.env.feed(input || [], 0, n);
      if (env !== null) { this.post(this.waiting[0], this.waiting[1], env); this.waiting = null; }
    }
    if (input && input.length > 0) {
      for (let c = 0; c < output.length; c++) output[c].set(input[Math.min(c, input.length - 1)]);
      this.out.length = 0;
      this.det.feed(input, currentTime, sampleRate, this.out);
      for (let k = 0; k < this.out.length; k++) {
        const t = this.out[k][0];
        const gap = this.out[k][1];
        if (this.env.bins <= 0) { this.post(t, gap, null); continue; }
        // an onset before the last one's envelope is full: that one goes with what it has
        if (this.waiting) this.post(this.waiting[0], this.waiting[1], this.env.finish());
        this.env.begin();
        const env = this.env.feed(input, Math.round((t - currentTime) * sampleRate), n);
        if (env !== null) { this.post(t, gap, env); this.waiting = null; }
        else this.waiting = [t, gap];
      }
    }
    return !this.stopped;
  }
}
registerProcessor(${JSON.stringify(PROCESSOR_NAME)}, LkSegOnsetProcessor);
`;
}
