import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { runInNewContext } from 'node:vm';

import { OnsetDetector, OnsetEnvelope } from '../src/detector.js';
import { PROCESSOR_NAME, workletSource } from '../src/worklet.js';

interface Case {
  name: string;
  sample_rate: number;
  threshold: number;
  gap: number;
  start: number;
  block: number;
  blocks: number[][][];
  onsets: Array<[number, number]>;
}

// the same file the agent's tests read (tests/test_client_playout.py)
const cases = (
  JSON.parse(
    readFileSync(new URL('../../../tests/fixtures/onset_cases.json', import.meta.url), 'utf8'),
  ) as { cases: Case[] }
).cases;

interface EnvelopeCase {
  name: string;
  sample_rate: number;
  bins: number;
  block: number;
  onset_index: number;
  blocks: number[][][];
  envelope: string;
}

// the same file the agent's tests read: both encoders must give the same characters
const envelopeCases = (
  JSON.parse(
    readFileSync(new URL('../../../tests/fixtures/envelope_cases.json', import.meta.url), 'utf8'),
  ) as { cases: EnvelopeCase[] }
).cases;

function close(a: Array<[number, number]>, b: Array<[number, number]>): void {
  assert.equal(a.length, b.length, `${JSON.stringify(a)} vs ${JSON.stringify(b)}`);
  a.forEach(([t, g], i) => {
    assert.ok(Math.abs(t - b[i]![0]) < 1e-9 && Math.abs(g - b[i]![1]) < 1e-9, `onset ${i}`);
  });
}

test('the detector finds the shared cases the agent finds', () => {
  for (const c of cases) {
    const det = new OnsetDetector(c.threshold, c.gap);
    const out: Array<[number, number]> = [];
    c.blocks.forEach((block, k) => det.feed(block, c.start + (k * c.block) / c.sample_rate, c.sample_rate, out));
    close(out, c.onsets);
  }
});

test('the worklet runs the same detector and passes the audio through', () => {
  for (const c of cases) {
    const posted: Array<[number, number]> = [];
    let Processor: (new (o: unknown) => { process: (i: unknown, o: unknown) => boolean; port: { onmessage: (e: unknown) => void } }) | undefined;
    let name = '';
    const scope: Record<string, unknown> = {
      currentTime: 0,
      sampleRate: c.sample_rate,
      AudioWorkletProcessor: class {
        port = {
          onmessage: null as unknown,
          postMessage: (m: { type: string; t: number; gap: number }) => posted.push([m.t, m.gap]),
        };
      },
      registerProcessor: (n: string, cls: typeof Processor) => {
        name = n;
        Processor = cls;
      },
    };
    runInNewContext(workletSource(), scope);
    assert.equal(name, PROCESSOR_NAME);
    const proc = new Processor!({ processorOptions: { threshold: c.threshold, gap: c.gap } });
    c.blocks.forEach((block, k) => {
      scope['currentTime'] = c.start + (k * c.block) / c.sample_rate;
      const input = block.map((ch) => Float64Array.from(ch));
      const output = [new Float64Array(block[0]!.length), new Float64Array(block[0]!.length)];
      assert.equal(proc.process([input], [output]), true);
      assert.deepEqual(Array.from(output[0]!), Array.from(input[0]!));
    });
    close(posted, c.onsets);
    // stop message ends processing
    proc.port.onmessage({ data: { type: 'stop' } });
    assert.equal(proc.process([[]], [[]]), false);
  }
});

test('the envelope encoder gives the agent\'s characters for the shared cases', () => {
  for (const c of envelopeCases) {
    const env = new OnsetEnvelope(c.bins, c.sample_rate);
    env.begin();
    let got: string | null = null;
    c.blocks.forEach((block, k) => {
      if (got === null) got = env.feed(block, k === 0 ? c.onset_index : 0, c.block);
    });
    assert.equal(got, c.envelope, c.name);
  }
});

test('with envBins the worklet posts each onset with its envelope once the envelope is full', () => {
  for (const c of envelopeCases) {
    const posted: Array<{ t: number; gap: number; env?: string }> = [];
    let Processor: (new (o: unknown) => { process: (i: unknown, o: unknown) => boolean }) | undefined;
    const scope: Record<string, unknown> = {
      currentTime: 0,
      sampleRate: c.sample_rate,
      AudioWorkletProcessor: class {
        port = { onmessage: null as unknown, postMessage: (m: { t: number; gap: number; env?: string }) => posted.push(m) };
      },
      registerProcessor: (_n: string, cls: typeof Processor) => {
        Processor = cls;
      },
    };
    runInNewContext(workletSource(), scope);
    const proc = new Processor!({ processorOptions: { threshold: 0.01, gap: 0.2, envBins: c.bins } });
    c.blocks.forEach((block, k) => {
      scope['currentTime'] = 5 + (k * c.block) / c.sample_rate;
      const input = block.map((ch) => Float64Array.from(ch));
      proc.process([input], [input.map((ch) => new Float64Array(ch.length))]);
    });
    assert.equal(posted.length, 1, c.name);
    assert.equal(posted[0]!.env, c.envelope, c.name);
    assert.ok(Math.abs(posted[0]!.t - (5 + c.onset_index / c.sample_rate)) < 1e-9, c.name);
  }
});
