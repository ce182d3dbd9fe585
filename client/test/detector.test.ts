import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { runInNewContext } from 'node:vm';

import { LevelRing, OnsetDetector, OnsetEnvelope } from '../src/detector.js';
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

test("the level ring's bins are the envelope's characters where both start on a bin", () => {
  for (const c of envelopeCases) {
    // a frame offset that puts the onset on a bin boundary of the context's ms grid
    const period = c.sample_rate % 1000 === 0 ? c.sample_rate / 1000 : c.sample_rate / 100;
    const f0 = period * 1000 - c.onset_index;
    const ring = new LevelRing(512, c.sample_rate);
    c.blocks.forEach((block, k) => ring.feed(block, f0 + k * c.block, c.block));
    const k0 = ((f0 + c.onset_index) * 1000) / c.sample_rate;
    assert.ok(Number.isInteger(k0));
    const got = ring.read(k0, c.bins);
    assert.ok(got, c.name);
    assert.equal(got[0], k0);
    assert.ok(got[1].length >= Math.min(c.bins, c.envelope.length) - 1, c.name);
    assert.equal(got[1], c.envelope.slice(0, got[1].length), c.name);
    // the bins before the onset hold what was fed there
    assert.equal(ring.read(0, 1), null, 'nothing that far back');
  }
});

test('the level ring keeps its last bins and gives what it has of a request', () => {
  const ring = new LevelRing(100, 48000);
  const loud = [new Float32Array(48).fill(0.5)];
  for (let k = 0; k < 300; k++) ring.feed(k % 2 ? [] : loud, k * 48, 48); // 1 ms on, 1 ms off
  // bin 299 is still open (no later sample closed it): the last 100, 199..298, are kept
  assert.deepEqual(ring.read(150, 60), [199, 'A' + '8A'.repeat(5)]);
  assert.deepEqual(ring.read(290, 20), [290, '8A8A8A8A8']);
  assert.equal(ring.read(299, 5), null);
  assert.equal(new LevelRing(10, 48000).read(0, 5), null);
  // 2 ms levels: each the RMS over an on and an off ms, 3 dB under the on ms alone; from 150
  // the first whole pair kept starts at 200, and the 60 asked for end at 269
  assert.deepEqual(ring.read(150, 60, 2), [200, '6'.repeat(35)]);
  assert.deepEqual(ring.read(199, 3, 2), [199, '666']);
  assert.deepEqual(ring.read(290, 20, 3), [290, '757']); // 2 of 3 ms on, 1 of 3, 2 of 3
  assert.equal(ring.read(298, 5, 2), null, 'no whole pair kept: bin 299 is open');
});

test('a level several ms wide is the RMS over their samples, as the agent bins its audio', () => {
  // 44.1 kHz: 1 ms bins alternate 44 and 45 frames, so a mean of the ms levels would differ
  const ring = new LevelRing(64, 44100);
  const x = new Float32Array(4410);
  for (let i = 0; i < x.length; i++) x[i] = 0.02 * Math.sin(i / 7) * (1 + Math.floor(i / 300));
  ring.feed([x], 0, x.length);
  // bins 0..98 are complete (99 is open), 35..98 kept: from 20 in steps of 4, 36 is the first
  const got = ring.read(20, 10, 4)!;
  assert.equal(got[0], 36);
  const want = [...Array(got[1].length).keys()].map((j) => {
    const [a, b] = [Math.ceil(((36 + 4 * j) * 44100) / 1000), Math.ceil(((40 + 4 * j) * 44100) / 1000)];
    let s = 0;
    for (let i = a; i < b; i++) s += x[i]! * x[i]!;
    const level = Math.floor((20 * Math.log10(Math.sqrt(s / (b - a))) + 96) / 1.5 + 0.5);
    return 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'[level];
  });
  assert.equal(got[1], want.join(''));
  assert.equal(got[1].length, 6, '10 asked from 20: four before 36 were not kept');
});

test('with levelBins the worklet answers levels requests from its ring', () => {
  const posted: Array<Record<string, unknown>> = [];
  let Processor:
    | (new (o: unknown) => { process: (i: unknown, o: unknown) => boolean; port: { onmessage: (e: unknown) => void } })
    | undefined;
  const scope: Record<string, unknown> = {
    currentTime: 0,
    currentFrame: 0,
    sampleRate: 48000,
    AudioWorkletProcessor: class {
      port = { onmessage: null as unknown, postMessage: (m: Record<string, unknown>) => posted.push(m) };
    },
    registerProcessor: (_n: string, cls: typeof Processor) => {
      Processor = cls;
    },
  };
  runInNewContext(workletSource(), scope);
  const proc = new Processor!({ processorOptions: { threshold: 0.01, gap: 0.2, levelBins: 1000 } });
  for (let k = 0; k < 10; k++) {
    scope['currentFrame'] = 48000 + k * 128;
    scope['currentTime'] = (48000 + k * 128) / 48000;
    const input = [new Float32Array(128).fill(k < 5 ? 0 : 0.5)];
    proc.process([input], [[new Float32Array(128)]]);
  }
  proc.port.onmessage({ data: { type: 'levels', id: 7, from: 1010, n: 100 } });
  // frames 48000..49279: bins 1000..1026, the last still open; silence up to frame 48640,
  // inside bin 1013 (frames 48624..48671: a third silent)
  const plain = (m: unknown) => JSON.parse(JSON.stringify(m)) as unknown; // from another realm
  assert.deepEqual(plain(posted.at(-1)), { type: 'levels', id: 7, from: 1010, lv: 'AAA7' + '8'.repeat(12) });
  proc.port.onmessage({ data: { type: 'levels', id: 8, from: 5000, n: 10 } });
  assert.deepEqual(plain(posted.at(-1)), { type: 'levels', id: 8, from: null, lv: '' });
  // 2 ms levels: 1010-1011 silent, 1012-1013 silent but for two thirds of 1013, then sound
  proc.port.onmessage({ data: { type: 'levels', id: 9, from: 1010, n: 100, w: 2 } });
  assert.deepEqual(plain(posted.at(-1)), { type: 'levels', id: 9, from: 1010, lv: 'A5' + '8'.repeat(6) });
});
