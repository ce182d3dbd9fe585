import { OnsetDetector } from './detector.js';

/** The AudioWorkletProcessor's registered name. */
export const PROCESSOR_NAME = 'lkseg-onset';

/**
 * Source of the AudioWorklet module: passes audio through unchanged and posts
 * `{type: 'onset', t, gap}` (AudioContext seconds) for each onset. The detector is
 * `OnsetDetector`'s own source text, so worklet and unit tests run the same code; it is taken
 * as a class expression, so a minifier renaming the class changes nothing.
 */
export function workletSource(): string {
  return `const Detector = (${OnsetDetector.toString()});
class LkSegOnsetProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const p = (options && options.processorOptions) || {};
    this.det = new Detector(p.threshold ?? 0.01, p.gap ?? 0.2);
    this.out = [];
    this.stopped = false;
    this.port.onmessage = (e) => {
      const m = e.data || {};
      if (m.type === 'params') { this.det.threshold = m.threshold; this.det.gap = m.gap; }
      else if (m.type === 'stop') { this.stopped = true; }
    };
  }
  process(inputs, outputs) {
    const input = inputs[0];
    const output = outputs[0];
    if (input && input.length > 0) {
      for (let c = 0; c < output.length; c++) output[c].set(input[Math.min(c, input.length - 1)]);
      this.out.length = 0;
      this.det.feed(input, currentTime, sampleRate, this.out);
      for (let k = 0; k < this.out.length; k++) {
        this.port.postMessage({ type: 'onset', t: this.out[k][0], gap: this.out[k][1] });
      }
    }
    return !this.stopped;
  }
}
registerProcessor(${JSON.stringify(PROCESSOR_NAME)}, LkSegOnsetProcessor);
`;
}
