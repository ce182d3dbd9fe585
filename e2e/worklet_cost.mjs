// The companion's audio processing in Chromium, alone: the AudioWorklet processor's own code
// (client/dist/onset-worklet.js: the detector and the envelope) run over recorded speech in
// headless Chromium's V8, block by block as the audio thread calls it, and timed.
// Usage: node worklet_cost.mjs WORKLET.js AUDIO.f32 RATE REPEATS
// AUDIO.f32: mono float32 little-endian samples. Prints JSON {"runs_ms": [...], "audio_s": s}.
import { readFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

const [workletPath, audioPath, rateArg, repeatsArg] = process.argv.slice(2);
const source = readFileSync(workletPath, 'utf8');
const audio = readFileSync(audioPath);
const rate = Number(rateArg);
const repeats = Number(repeatsArg);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--headless=new', '--no-sandbox', '--disable-gpu'],
});
try {
  const page = await browser.newPage();
  const result = await page.evaluate(
    ({ source, b64, rate, repeats }) => {
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const samples = new Float32Array(bytes.buffer);
      const g = globalThis;
      let Processor;
      g.sampleRate = rate;
      g.currentTime = 0;
      g.currentFrame = 0;
      g.AudioWorkletProcessor = class {
        constructor() {
          this.port = { onmessage: null, postMessage() {} };
        }
      };
      g.registerProcessor = (_name, cls) => {
        Processor = cls;
      };
      new Function(source)();
      const runs = [];
      const n = 128;
      const out = [new Float32Array(n), new Float32Array(n)];
      for (let r = 0; r < repeats; r++) {
        // what the companion asks of it: the agent's defaults, 64 envelope bins, and the
        // levels it keeps for the agent's levels requests (8 s)
        const proc = new Processor({
          processorOptions: { threshold: 0.01, gap: 0.2, envBins: 64, levelBins: 8192 },
        });
        const t0 = performance.now();
        for (let k = 0; k + n <= samples.length; k += n) {
          g.currentTime = k / rate;
          g.currentFrame = k;
          proc.process([[samples.subarray(k, k + n)]], [out]);
        }
        runs.push(performance.now() - t0);
      }
      return { runs_ms: runs, audio_s: samples.length / rate };
    },
    { source, b64: audio.toString('base64'), rate, repeats },
  );
  process.stdout.write(JSON.stringify(result) + '\n');
} finally {
  await browser.close();
}
