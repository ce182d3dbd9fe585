import assert from 'node:assert/strict';
import { test } from 'node:test';

import type { RemoteAudioTrack } from 'livekit-client';

import { addedDelay, createBrowserTap } from '../src/tap.js';

// node has no WebAudio: just enough of it for the own-graph tap
const g = globalThis as Record<string, unknown>;
g['AudioContext'] ??= class {};
g['AudioWorkletNode'] ??= class {
  port = { onmessage: null as unknown, postMessage: () => undefined };
  connect(): void {}
  disconnect(): void {}
};
g['MediaStream'] ??= class {};

/**
 * A running context whose output stamps are `lagMs` behind currentTime and `lagMs + noise`
 * old when read: Firefox's kind (the render point: age equals lag) when `ageMs` is null,
 * Chromium's kind (a stamp of the last callback, whatever the lag) when it is a number.
 */
class FakeContext {
  state = 'running';
  currentTime = 12.5;
  baseLatency = 0;
  outputLatency = 0.035;
  sampleRate = 48000;
  destination = {};
  noise = 0;
  constructor(
    private readonly lagMs: number,
    private readonly ageMs: number | null,
  ) {}
  audioWorklet = { addModule: async () => undefined };
  createMediaStreamSource() {
    return { connect: () => undefined, disconnect: () => undefined };
  }
  addEventListener(): void {}
  removeEventListener(): void {}
  async resume(): Promise<void> {}
  async close(): Promise<void> {}
  getOutputTimestamp() {
    const age = (this.ageMs ?? this.lagMs) + this.noise;
    return { contextTime: this.currentTime - this.lagMs / 1000, performanceTime: performance.now() - age };
  }
}

async function tapOn(ctx: FakeContext) {
  const track = {
    mediaStreamTrack: {},
    attachedElements: [],
    on: () => undefined,
    off: () => undefined,
  } as unknown as RemoteAudioTrack;
  return createBrowserTap(
    track,
    {
      path: 'own-graph',
      audioContext: ctx as unknown as AudioContext,
      workletUrl: 'onset-worklet.js',
      webAudioMix: false,
      threshold: 0.01,
      gapSeconds: 0.2,
    },
    () => undefined,
  );
}

test("a context's render-point stamps are recognized once, not stamp by stamp", async () => {
  const ctx = new FakeContext(35.4, null);
  const tap = await tapOn(ctx);
  try {
    // Firefox rounds performance.now() to 1 ms with jitter: a stamp can look a few ms older
    for (const noise of [0.3, -0.6, 0.9, 0.2, -0.4, 4.5, -4.0, 0.1]) {
      ctx.noise = noise;
      const t = tap.toClientMs(ctx.currentTime);
      assert.equal(tap.dating, 'render-timestamp', `noise ${noise}`);
      // the sample at currentTime leaves the device one output latency after now
      assert.ok(Math.abs(t - (performance.timeOrigin + performance.now() + 35 - noise + 35.4 - 35.4)) < 1.5);
    }
  } finally {
    tap.close();
  }
});

test("a context's output stamps are taken as they are", async () => {
  const ctx = new FakeContext(41.0, 3.0); // Chromium: the whole latency behind, a callback old
  const tap = await tapOn(ctx);
  try {
    for (const noise of [0, 1.5, 6.0, 0.4, 38.0, 0.2]) {
      ctx.noise = noise;
      const t = tap.toClientMs(ctx.currentTime);
      assert.equal(tap.dating, 'output-timestamp', `noise ${noise}`);
      assert.ok(Math.abs(t - (performance.timeOrigin + performance.now() - 3.0 - noise + 41.0)) < 1.5);
    }
  } finally {
    tap.close();
  }
});

test("a stamp from the future (WebKitGTK's) is not used: currentTime + latency dates instead", async () => {
  // WebKitGTK 2.50: performanceTime is a fresh render-time stamp plus contextTime, in ms
  class WebKitGtkContext extends FakeContext {
    override getOutputTimestamp() {
      return { contextTime: this.currentTime - 0.003, performanceTime: performance.now() - 1.5 + this.currentTime * 1000 };
    }
  }
  const ctx = new WebKitGtkContext(0, 0);
  const tap = await tapOn(ctx);
  try {
    const t = tap.toClientMs(ctx.currentTime);
    assert.equal(tap.dating, 'latency');
    // the sample at currentTime leaves the device one output latency (35 ms) after now
    const late = t - (performance.timeOrigin + performance.now() + 35);
    assert.ok(Math.abs(late) < 5, `dated ${late.toFixed(1)} ms off`);
  } finally {
    tap.close();
  }
});

/** setInterval/clearInterval on a virtual clock, for the tap's own intervals. */
function virtualIntervals() {
  const real = { set: globalThis.setInterval, clear: globalThis.clearInterval };
  let now = 0;
  let next = 1;
  const live = new Map<number, { fn: () => void; ms: number; due: number }>();
  const g = globalThis as unknown as Record<string, unknown>;
  g['setInterval'] = (fn: () => void, ms: number) => {
    live.set(next, { fn, ms, due: now + ms });
    return next++;
  };
  g['clearInterval'] = (id: number) => live.delete(id);
  return {
    tick(ms: number) {
      const end = now + ms;
      for (;;) {
        const [id, due] = [...live].reduce<[number, number]>((a, [k, v]) => (v.due < a[1] ? [k, v.due] : a), [0, Infinity]);
        if (due > end) break;
        const it = live.get(id)!;
        now = due;
        it.due += it.ms;
        it.fn();
      }
      now = end;
    },
    restore() {
      g['setInterval'] = real.set;
      g['clearInterval'] = real.clear;
    },
  };
}

test("refused stamps warm the fallback before the first onset, and judging stops after 20", async () => {
  let stampsRead = 0;
  let clockReads = 0;
  const ctx = new FakeContext(0, 0);
  Object.defineProperty(ctx, 'currentTime', {
    get: () => {
      clockReads += 1;
      return 12.5;
    },
  });
  ctx.getOutputTimestamp = () => {
    stampsRead += 1; // WebKitGTK's: a fresh render-time stamp plus contextTime, in ms
    return { contextTime: 12.497, performanceTime: performance.now() - 1.5 + 12500 };
  };
  const clock = virtualIntervals();
  try {
    const tap = await tapOn(ctx);
    try {
      clock.tick(50); // the first judging tick refuses a stamp
      assert.equal(stampsRead, 1);
      const atRefusal = clockReads;
      clock.tick(9); // the fallback's sampler reads currentTime every 3 ms from then
      assert.equal(clockReads - atRefusal, 3, 'the sampler runs before any onset');
      clock.tick(50 * 30);
      assert.equal(stampsRead, 20, 'judging stops after 20 refused stamps');
    } finally {
      tap.close();
    }
  } finally {
    clock.restore();
  }
});

test("a running context's stamps before it started start the sampler, its sane stamps stop it", async () => {
  let clockReads = 0;
  let started = false;
  const ctx = new FakeContext(41.0, 3.0); // Chromium's kind, once it runs
  Object.defineProperty(ctx, 'currentTime', {
    get: () => {
      clockReads += 1;
      return started ? 12.5 : 0;
    },
  });
  const chromium = ctx.getOutputTimestamp.bind(ctx);
  ctx.getOutputTimestamp = () => (started ? chromium() : { contextTime: 0, performanceTime: 0 });
  const clock = virtualIntervals();
  try {
    const tap = await tapOn(ctx);
    try {
      clock.tick(50); // running, but its clock has not started: refused
      const atRefusal = clockReads;
      clock.tick(9);
      assert.ok(clockReads - atRefusal >= 3, 'sampling while stamps are refused');
      started = true;
      clock.tick(50); // a sane stamp
      const atSane = clockReads;
      clock.tick(30);
      // the judging tick reads currentTime for its vote; the sampler's 10 reads are gone
      assert.ok(clockReads - atSane <= 1, `${clockReads - atSane} reads after a sane stamp`);
    } finally {
      tap.close();
    }
  } finally {
    clock.restore();
  }
});

test("a stamp at most 5 ms ahead of now is taken (clock rounding)", async () => {
  const ctx = new FakeContext(41.0, -4.0); // a stamp 4 ms ahead
  const tap = await tapOn(ctx);
  try {
    tap.toClientMs(ctx.currentTime);
    assert.equal(tap.dating, 'output-timestamp');
  } finally {
    tap.close();
  }
});

test('the audio the jitter buffer added: concealed and stretched less removed, at the codec rate', () => {
  const s = {
    type: 'inbound-rtp',
    kind: 'audio',
    codecId: 'C1',
    concealedSamples: 7742,
    insertedSamplesForDeceleration: 7086,
    removedSamplesForAcceleration: 480,
    packetsLost: 3,
    packetsDiscarded: 1,
  };
  const report = new Map<string, unknown>([['C1', { clockRate: 48000 }]]);
  const [ms, missed] = addedDelay(s, report)!;
  assert.ok(Math.abs(ms - (7742 + 7086 - 480) / 48) < 1e-9);
  assert.equal(missed, 4);
  // another rate, from the codec the stream names
  report.set('C1', { clockRate: 16000 });
  assert.ok(Math.abs(addedDelay(s, report)![0] - (7742 + 7086 - 480) / 16) < 1e-9);
  // a browser without one of the counters: nothing, and the agent uses jb
  const { insertedSamplesForDeceleration: _, ...partial } = s;
  assert.equal(addedDelay(partial, report), undefined);
  const { packetsLost: __, ...noLoss } = s;
  assert.equal(addedDelay(noLoss, report), undefined);
  const { packetsDiscarded: ___, ...noDiscards } = s;
  assert.equal(addedDelay(noDiscards, report), undefined);
});
