import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { beforeEach, test } from 'node:test';

import type { Room } from 'livekit-client';

import { HELLO, LEVELS, REPORT, SYNC } from '../src/protocol.js';
import { startPlayoutReporter, type ReporterDeps } from '../src/reporter.js';
import type { Tap, TapFactory, TapOptions } from '../src/tap.js';

// node has no WebAudio: pretend the browser has an AudioWorklet, so a path is chosen
const g = globalThis as Record<string, unknown>;
g['AudioWorkletNode'] ??= class {};
g['AudioContext'] ??= class {};


class Timers {
  now = 1_000_000;
  private list: Array<{ at: number; fn: () => void; n: number }> = [];
  private n = 0;
  setTimer = (fn: () => void, ms: number): (() => void) => {
    const entry = { at: this.now + ms, fn, n: this.n++ };
    this.list.push(entry);
    return () => {
      this.list = this.list.filter((e) => e !== entry);
    };
  };
  async advance(ms: number): Promise<void> {
    const end = this.now + ms;
    for (;;) {
      await settle();
      const due = this.list.filter((e) => e.at <= end).sort((a, b) => a.at - b.at || a.n - b.n);
      if (!due.length) break;
      const e = due[0]!;
      this.list = this.list.filter((x) => x !== e);
      this.now = Math.max(this.now, e.at);
      e.fn();
    }
    this.now = end;
    await settle();
  }
}

async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
}

interface Call {
  method: string;
  dest: string;
  body: Record<string, unknown>;
  bytes: number;
}

class FakeTrack extends EventEmitter {
  kind = 'audio';
}

class FakeParticipant {
  trackPublications = new Map<string, { kind: string; track?: FakeTrack }>();
  attributes: Record<string, string> = {};
  constructor(
    public identity: string,
    public kind: number,
  ) {}
  publishAudio(): FakeTrack {
    const track = new FakeTrack();
    this.trackPublications.set('TR_a', { kind: 'audio', track });
    return track;
  }
}

class FakeRoom extends EventEmitter {
  remoteParticipants = new Map<string, FakeParticipant>();
  options = { webAudioMix: false };
  calls: Call[] = [];
  failHello = 0;
  failSync = false;
  syncReply: ((body: Record<string, unknown>) => string) | undefined;
  helloExtra: Record<string, unknown> = {}; // an agent of this version adds env_bins
  // what the companion registered (livekit-client 2.9+: on the Room)
  methods = new Map<string, (d: { callerIdentity: string; payload: string }) => Promise<string>>();
  registerRpcMethod(method: string, handler: (d: { callerIdentity: string; payload: string }) => Promise<string>): void {
    if (this.methods.has(method)) throw new Error(`RPC handler already registered for ${method}`);
    this.methods.set(method, handler);
  }
  unregisterRpcMethod(method: string): void {
    this.methods.delete(method);
  }

  constructor(private timers: Timers) {
    super();
  }
  localParticipant = {
    performRpc: async (p: { destinationIdentity: string; method: string; payload: string }) => {
      const body = JSON.parse(p.payload) as Record<string, unknown>;
      this.calls.push({ method: p.method, dest: p.destinationIdentity, body, bytes: p.payload.length });
      if (p.method === HELLO) {
        if (this.failHello > 0) {
          this.failHello -= 1;
          throw new Error('1400 unsupported method');
        }
        return JSON.stringify({ v: 1, thr: 0.01, gap_ms: 200, sync_s: 10, max_onsets: 2, ...this.helloExtra });
      }
      if (p.method === SYNC) {
        if (this.failSync) throw new Error('2002 rejected');
        if (this.syncReply) return this.syncReply(body);
        return JSON.stringify({ q: body['q'], dt: 0.1 });
      }
      return '';
    },
  };
  join(p: FakeParticipant): void {
    this.remoteParticipants.set(p.identity, p);
    this.emit('participantConnected', p);
  }
  leave(p: FakeParticipant): void {
    this.remoteParticipants.delete(p.identity);
    this.emit('participantDisconnected', p);
  }
  of(method: string): Call[] {
    return this.calls.filter((c) => c.method === method);
  }
}

class FakeTap implements Tap {
  path: 'plugin' | 'own-graph';
  dating: Tap['dating'] = 'none';
  closed = false;
  valid = true;
  params: [number, number] | undefined;
  constructor(
    public options: TapOptions,
    public onOnset: (t: number, gap: number, env?: string) => void,
    private timers: Timers,
  ) {
    this.path = options.webAudioMix ? 'plugin' : 'own-graph';
  }
  // context time 0 is client time 500 000 ms; the device plays 20 ms after the graph
  toClientMs(c: number): number {
    this.dating = 'output-timestamp';
    return 500_000 + c * 1000 + 20;
  }
  contextNow(): number {
    return (this.timers.now - 500_000) / 1000;
  }
  jb: number | undefined; // the jitter buffer's delay, once a test sets it
  ad: [number, number] | undefined; // the audio it added, and packets missed
  reads = 0; // receivePath calls: each starts a new averaging interval
  async receivePath(): Promise<{ rx?: number; net?: number; jb?: number; ad?: [number, number] }> {
    this.reads += 1;
    const out = this.jb === undefined ? { rx: 42.25, net: 7.04 } : { rx: this.jb + 20, net: 7.04, jb: this.jb };
    return this.ad === undefined ? out : { ...out, ad: [...this.ad] };
  }
  // the device's levels: bin k starts at context time k ms
  levelsAsked: Array<[number, number, number]> = [];
  async levels(fromClientMs: number, n: number, w: number): Promise<{ t: number; lv: string } | null> {
    this.levelsAsked.push([fromClientMs, n, w]);
    if (!this.options.levelBins) return null;
    const from = Math.floor(fromClientMs - this.toClientMs(0));
    return { t: this.toClientMs(from / 1000), lv: 'Q'.repeat(n) };
  }
  setParams(t: number, gap: number): void {
    this.params = [t, gap];
  }
  async resume(): Promise<void> {}
  close(): void {
    this.closed = true;
  }
}

let timers: Timers;
let room: FakeRoom;
let taps: FakeTap[];
let errors: unknown[];
let deps: Partial<ReporterDeps>;

beforeEach(() => {
  timers = new Timers();
  room = new FakeRoom(timers);
  taps = [];
  errors = [];
  let sids = 0;
  const tapFactory: TapFactory = async (_track, options, onOnset) => {
    const tap = new FakeTap(options, onOnset, timers);
    taps.push(tap);
    return tap;
  };
  deps = {
    now: () => timers.now,
    setTimer: timers.setTimer,
    tapFactory,
    sid: () => `sid-${String(++sids).padStart(4, '0')}`,
  };
});

function start(opts: Parameters<typeof startPlayoutReporter>[1] = {}) {
  return startPlayoutReporter(room as unknown as Room, { onError: (e) => errors.push(e), ...opts }, deps);
}

/** An agent with an audio track in the room, the reporter started, its tap made. */
async function startWithAgent() {
  const agent = new FakeParticipant('agent-1', 4);
  agent.publishAudio();
  room.join(agent);
  const reporter = start();
  await timers.advance(0);
  return { agent, reporter, tap: taps[0]! };
}

test('finds the agent, says hello, syncs, and taps its audio track', async () => {
  room.join(new FakeParticipant('user-2', 0)); // a standard participant: not the agent
  const agent = new FakeParticipant('agent-1', 4);
  agent.publishAudio();
  room.join(agent);
  const reporter = start();
  await timers.advance(0);
  assert.equal(reporter.agentIdentity, 'agent-1');
  const [hello] = room.of(HELLO);
  assert.deepEqual(hello!.body, {
    v: 1,
    sid: 'sid-0001',
    client: '@livekit-segments/client/0.1.0',
    path: 'own-graph',
    lv: 1,
  });
  assert.equal(hello!.dest, 'agent-1');
  assert.equal(taps.length, 1);
  assert.equal(taps[0]!.options.threshold, 0.01);
  assert.equal(taps[0]!.options.dating, 'auto');
  assert.equal(taps[0]!.options.gapSeconds, 0.2);
  await timers.advance(1000);
  const syncs = room.of(SYNC);
  assert.equal(syncs.length, 5); // 4 at start, one at the start of the steady state
  assert.deepEqual(syncs.map((s) => s.body['q']), [1, 2, 3, 4, 5]);
  // times as sent count from the companion's start: 250 ms apart from 0
  assert.deepEqual(syncs.map((s) => s.body['t0']), [0, 250, 500, 750, 1000]);
  assert.equal(syncs[0]!.body['prev'], undefined);
  assert.deepEqual(syncs[1]!.body['prev'], [1, syncs[0]!.body['t0']]); // t3 == t0: instant fake RPC
  assert.equal(syncs[1]!.body['rx'], 42.3);
  assert.equal(syncs[1]!.body['net'], 7);
  await timers.advance(10_000);
  assert.equal(room.of(SYNC).length, 6);
  assert.equal(reporter.stats.path, 'own-graph');
  reporter.stop();
});

test('reports onsets once dated in the past, batched, in sequence, at most 4 a second', async () => {
  const { reporter, tap } = await startWithAgent();
  // an onset before the agent can convert times (no completed exchange yet) waits
  tap.onOnset(tap.contextNow(), 60);
  await timers.advance(0);
  assert.equal(room.of(REPORT).length, 0);
  await timers.advance(300); // the second sync completes the first exchange
  const [first] = room.of(REPORT);
  assert.ok(first, 'sent once the agent can convert');
  // client times count from the companion's start (1 000 000 here): short numbers
  assert.equal(reporter.clockOrigin, 1_000_000);
  assert.deepEqual(first.body['o'], [[20, 60000]]);
  // three onsets at once, the device plays them 20 ms after the graph sees them: they wait
  // until then, go at most two (max_onsets) per report and one report per 250 ms
  const c = tap.contextNow();
  tap.onOnset(c, 0.3);
  tap.onOnset(c + 0.001, 0.25);
  tap.onOnset(c + 0.002, 0.5);
  await timers.advance(10);
  assert.equal(room.of(REPORT).length, 1);
  await timers.advance(1000);
  const reports = room.of(REPORT);
  assert.equal(reports.length, 3);
  assert.equal((reports[1]!.body['o'] as unknown[]).length, 2);
  assert.equal((reports[2]!.body['o'] as unknown[]).length, 1);
  // one q sequence over syncs and reports, strictly increasing in send order
  const qs = room.calls.filter((x) => x.method !== HELLO).map((x) => x.body['q'] as number);
  assert.deepEqual(qs, [...qs].sort((a, b) => a - b));
  assert.equal(new Set(qs).size, qs.length);
  assert.equal(reporter.stats.onsetsSent, 4);
  // idle for a while: no rate limit holds it, only its device time, 20 ms after the graph
  await timers.advance(5000);
  tap.onOnset(tap.contextNow(), 4);
  await timers.advance(10);
  assert.equal(room.of(REPORT).length, 3, 'not before the device played it');
  await timers.advance(15);
  assert.equal(room.of(REPORT).length, 4);
  const sent = room.of(REPORT)[3]!.body['o'] as Array<[number, number]>;
  // sent as ms since the companion's start: dated 20 ms after the graph saw it, in the past
  assert.ok(sent[0]![0] + reporter.clockOrigin <= timers.now);
  assert.ok(sent[0]![0] + reporter.clockOrigin > timers.now - 25);
  reporter.stop();
});

test("onsets carry their envelope when the agent asks for one, and not to an older agent", async () => {
  for (const bins of [32, undefined]) {
    room.helloExtra = bins === undefined ? {} : { env_bins: bins };
    room.calls = [];
    taps.length = 0;
    const { reporter, tap, agent } = await startWithAgent();
    assert.equal(tap.options.envelopeBins, bins ?? 0);
    await timers.advance(300);
    tap.onOnset(tap.contextNow(), 0.3, 'z73150vAAAAAAAAA');
    await timers.advance(1000);
    const sent = room.of(REPORT).map((r) => r.body['o']);
    const t = (sent[0] as Array<[number, number]>)[0]![0];
    assert.deepEqual(sent, [[bins ? [t, 300, 'z73150vAAAAAAAAA'] : [t, 300]]]);
    reporter.stop();
    room.leave(agent);
  }
});

test('a change of the jitter buffer delay is sent at once, in a sync; no change sends nothing', async () => {
  const { reporter, tap } = await startWithAgent();
  tap.jb = 40;
  await timers.advance(1500);
  // the first poll (1 s) read 250 ms after the last startup sync read: too short to send
  assert.equal(room.of(SYNC).filter((c) => c.body['jb'] !== undefined).length, 0);
  await timers.advance(1000); // the second one read over a whole second: sent, none sent yet
  const first = room.of(SYNC).filter((c) => c.body['jb'] !== undefined);
  assert.ok(first.length >= 1);
  assert.equal(first.at(-1)!.body['jb'], 40);
  const n = room.of(SYNC).length;
  tap.jb = 48.5; // less than 10 ms away from what the agent has
  await timers.advance(3000);
  assert.equal(room.of(SYNC).length, n);
  tap.jb = 140; // NetEq raised its delay
  await timers.advance(1000);
  const after = room.of(SYNC);
  assert.equal(after.length, n + 1);
  assert.equal(after.at(-1)!.body['jb'], 140);
  // rx and net serve only the agent's prior: a sync for the jitter buffer leaves them out
  assert.equal(after.at(-1)!.body['rx'], undefined);
  assert.equal(after.at(-1)!.body['net'], undefined);
  const reads = tap.reads;
  await timers.advance(10_000); // the steady sync still carries them
  assert.equal(room.of(SYNC).at(-1)!.body['rx'], 160);
  // but not jb, and it took the poll's reading: only the poll reads, once a second, so each
  // reading averages the second before the sync that carries it
  assert.equal(room.of(SYNC).at(-1)!.body['jb'], undefined);
  assert.equal(tap.reads - reads, 10);
  reporter.stop();
});

test('the audio the jitter buffer added is sent when it moved 5 ms with no packet missed, and with every jb', async () => {
  const { reporter, tap } = await startWithAgent();
  const adSyncs = () => room.of(SYNC).filter((c) => c.body['ad'] !== undefined);
  tap.jb = 40;
  tap.ad = [54, 2];
  await timers.advance(1500);
  // an instant reading: the first poll sends it (jb's reading was too short)
  const first = room.of(SYNC).filter((c) => c.body['ad'] !== undefined);
  assert.equal(first.length, 1);
  assert.deepEqual(first[0]!.body['ad'], [54, 2]);
  assert.equal(first[0]!.body['jb'], undefined);
  await timers.advance(1000); // jb's first whole second: it carries ad too
  assert.deepEqual(adSyncs().at(-1)!.body['ad'], [54, 2]);
  assert.equal(room.of(SYNC).at(-1)!.body['jb'], 40);
  let n = adSyncs().length;
  tap.ad = [57, 2]; // less than 5 ms
  await timers.advance(2000);
  assert.equal(adSyncs().length, n);
  tap.ad = [194, 2]; // a step: NetEq made up 140 ms
  await timers.advance(1000);
  assert.equal(adSyncs().length, n + 1);
  assert.deepEqual(adSyncs().at(-1)!.body['ad'], [194, 2]);
  n = adSyncs().length;
  tap.ad = [234, 6]; // concealment for lost packets: no use to the agent, not sent for it
  await timers.advance(1000);
  tap.ad = [244, 7];
  await timers.advance(1000);
  tap.ad = [254, 8];
  await timers.advance(1000);
  assert.equal(adSyncs().length, n);
  tap.jb = 60; // the next jb sync carries it
  await timers.advance(1000);
  assert.equal(adSyncs().length, n + 1);
  assert.deepEqual(adSyncs().at(-1)!.body['ad'], [254, 8]);
  tap.ad = [274, 8]; // the agent has this count: a move is sent again
  await timers.advance(1000);
  assert.equal(adSyncs().length, n + 2);
  assert.deepEqual(adSyncs().at(-1)!.body['ad'], [274, 8]);
  tap.ad = [284, 9]; // one lost: not sent
  await timers.advance(1000);
  tap.ad = [300, 9]; // a move one second after it: not yet
  await timers.advance(1000);
  assert.equal(adSyncs().length, n + 2);
  tap.ad = [320, 9]; // two seconds with none missed: sent
  await timers.advance(1000);
  assert.equal(adSyncs().length, n + 3);
  assert.deepEqual(adSyncs().at(-1)!.body['ad'], [320, 9]);
  await timers.advance(10_000); // the steady sync carries neither
  assert.equal(room.of(SYNC).at(-1)!.body['ad'], undefined);
  reporter.stop();
});

test("a new tap's added audio takes up where the last one's left off, with one more missed", async () => {
  const { agent, reporter, tap } = await startWithAgent();
  tap.ad = [300, 4];
  await timers.advance(1500);
  assert.deepEqual(room.of(SYNC).filter((c) => c.body['ad'] !== undefined).at(-1)!.body['ad'], [300, 4]);
  const old = [...agent.trackPublications.values()][0]!.track!;
  room.emit('trackUnsubscribed', old, {}, agent);
  const track = agent.publishAudio(); // a new track: its counters start from nothing
  room.emit('trackSubscribed', track, {}, agent);
  await timers.advance(0);
  const tap2 = taps.at(-1)!;
  assert.notEqual(tap2, tap);
  tap2.ad = [10, 0];
  tap2.jb = 50; // its first jb sync carries the new tap's ad
  await timers.advance(2000);
  const sent = room.of(SYNC).filter((c) => c.body['ad'] !== undefined);
  assert.deepEqual(sent.at(-1)!.body['ad'], [300, 5]);
  tap2.ad = [150, 0]; // a move, with the missed count the agent has (the jb sync sent it)
  await timers.advance(1000);
  assert.deepEqual(room.of(SYNC).at(-1)!.body['ad'], [440, 5]);
  reporter.stop();
});

test("a sync reply carries the agent's hold time; the round trip leaves it out", async () => {
  room.syncReply = (body) => JSON.stringify({ q: body['q'], dt: 0.4 });
  const { reporter } = await startWithAgent();
  await timers.advance(300);
  assert.ok(reporter.stats.syncs >= 1);
  assert.equal(reporter.stats.lastRttMs, -0.4); // the fake RPC answers at once: t3 == t0
  // a reply of another shape (t1 and t2, no dt): the sync failed, nothing is taken from it,
  // and after three such, as after three refusals, the companion says hello again
  const n = reporter.stats.syncs;
  const hellos = room.of(HELLO).length;
  room.syncReply = (body) => JSON.stringify({ q: body['q'], t1: 5, t2: 5 });
  await timers.advance(30_000);
  assert.equal(reporter.stats.syncs, n);
  assert.ok(room.of(HELLO).length > hellos);
  reporter.stop();
});

test('costs at most 300 bytes of payload per response', async () => {
  room.helloExtra = { env_bins: 64 }; // an agent that asks for envelopes: the dearer case
  const env = 'z73150vAAAAAAAAA'.repeat(4);
  const agent = new FakeParticipant('agent-1', 4);
  agent.publishAudio();
  room.join(agent);
  const reporter = start();
  await timers.advance(2000);
  const tap = taps[0]!;
  const before = reporter.stats.bytesSent;
  // ten responses, 6 s apart, two onsets each (a pause inside), over a minute
  for (let k = 0; k < 10; k++) {
    tap.onOnset(tap.contextNow(), 2.5, env);
    await timers.advance(1500);
    tap.onOnset(tap.contextNow(), 0.4, env);
    await timers.advance(4500);
  }
  const perResponse = (reporter.stats.bytesSent - before) / 10;
  assert.ok(perResponse <= 300, `${perResponse} bytes per response`);
  console.log(`payload per response: ${perResponse} bytes`);
  reporter.stop();
});

test('agentIdentity picks the participant; a leaving agent resets, a new one gets a new hello', async () => {
  const a = new FakeParticipant('bot-a', 4);
  a.publishAudio();
  const b = new FakeParticipant('bot-b', 4);
  b.publishAudio();
  room.join(a);
  room.join(b);
  const reporter = start({ agentIdentity: 'bot-b' });
  await timers.advance(0);
  assert.equal(reporter.agentIdentity, 'bot-b');
  room.leave(b);
  await timers.advance(0);
  assert.equal(taps[0]!.closed, true);
  assert.equal(reporter.agentIdentity, undefined);
  const nb = new FakeParticipant('bot-b', 4);
  nb.publishAudio();
  room.join(nb);
  await timers.advance(0);
  const hellos = room.of(HELLO);
  assert.deepEqual(hellos.map((h) => h.body['sid']), ['sid-0001', 'sid-0002']);
  assert.equal(taps.length, 2);
  reporter.stop();
});

test('the track arriving after hello is tapped; unsubscribing closes the tap', async () => {
  const agent = new FakeParticipant('agent-1', 4);
  room.join(agent);
  const reporter = start();
  await timers.advance(0);
  assert.equal(taps.length, 0);
  const track = agent.publishAudio();
  room.emit('trackSubscribed', track, {}, agent);
  await timers.advance(0);
  assert.equal(taps.length, 1);
  room.emit('trackUnsubscribed', track, {}, agent);
  assert.equal(taps[0]!.closed, true);
  reporter.stop();
});

test('webAudioMix selects the plugin path', async () => {
  room.options.webAudioMix = true;
  const agent = new FakeParticipant('agent-1', 4);
  agent.publishAudio();
  room.join(agent);
  const reporter = start();
  await timers.advance(0);
  assert.equal(room.of(HELLO)[0]!.body['path'], 'plugin');
  assert.equal(taps[0]!.options.webAudioMix, true);
  reporter.stop();
});

test('a hello the agent refuses is retried with backoff', async () => {
  room.failHello = 2;
  const agent = new FakeParticipant('agent-1', 4);
  agent.publishAudio();
  room.join(agent);
  const reporter = start();
  await timers.advance(0);
  assert.equal(room.of(HELLO).length, 1);
  assert.equal(errors.length, 1);
  await timers.advance(2000);
  assert.equal(room.of(HELLO).length, 2);
  await timers.advance(4000);
  assert.equal(room.of(HELLO).length, 3);
  assert.equal(taps.length, 1);
  reporter.stop();
});

test('stop closes the tap and sends nothing more', async () => {
  const agent = new FakeParticipant('agent-1', 4);
  agent.publishAudio();
  room.join(agent);
  const reporter = start();
  await timers.advance(1000);
  reporter.stop();
  const n = room.calls.length;
  taps[0]!.onOnset(taps[0]!.contextNow(), 1);
  await timers.advance(60_000);
  assert.equal(room.calls.length, n);
  assert.equal(taps[0]!.closed, true);
  assert.equal(room.listenerCount('trackSubscribed'), 0);
});

test('room disconnect stops it', async () => {
  const agent = new FakeParticipant('agent-1', 4);
  agent.publishAudio();
  room.join(agent);
  start();
  await timers.advance(0);
  room.emit('disconnected');
  assert.equal(taps[0]!.closed, true);
  assert.equal(room.listenerCount('participantDisconnected'), 0);
});

test('an agent that forgot the hello (restarted) gets a new one after three refused syncs', async () => {
  const agent = new FakeParticipant('agent-1', 4);
  agent.publishAudio();
  room.join(agent);
  const reporter = start();
  await timers.advance(2000);
  room.failSync = true;
  await timers.advance(29_500); // three steady-state syncs refused (11, 21, 31 s)
  assert.equal(room.of(HELLO).length, 1);
  await timers.advance(1000); // the new hello, 1 s later
  assert.deepEqual(room.of(HELLO).map((h) => h.body['sid']), ['sid-0001', 'sid-0002']);
  // still refused: the next hello backs off (2 s, then 4 s), no flood
  await timers.advance(10_000);
  const hellos = room.of(HELLO).length;
  assert.ok(hellos <= 4, `${hellos} hellos`);
  room.failSync = false;
  await timers.advance(70_000);
  assert.equal(reporter.agentIdentity, 'agent-1');
  const last = room.of(SYNC).at(-1)!;
  assert.ok((last.body['q'] as number) < 20, 'sequence numbers start over with the new sid');
  assert.ok(reporter.stats.syncs > 0 && room.of(SYNC).slice(-3).every((c) => c.body['prev']));
  reporter.stop();
});

test('a tap whose graph was replaced, or that failed, is made again at the next sync', async () => {
  let fail = 1;
  const factory = deps.tapFactory!;
  deps.tapFactory = async (track, options, onOnset) => {
    if (fail-- > 0) throw new Error('webAudioMix: the track has no AudioContext yet');
    return factory(track, options, onOnset);
  };
  const agent = new FakeParticipant('agent-1', 4);
  agent.publishAudio();
  room.join(agent);
  const reporter = start();
  await timers.advance(0);
  assert.equal(errors.length, 1);
  await timers.advance(300);
  assert.equal(taps.length, 1);
  taps[0]!.valid = false; // the SDK moved the track to a new AudioContext
  await timers.advance(10_000);
  assert.equal(taps[0]!.closed, true);
  assert.equal(taps.length, 2);
  reporter.stop();
});

test("the agent's levels requests are answered from the tap, and only the agent's", async () => {
  room.helloExtra = { env_bins: 64, lv: 1 };
  const { reporter, tap } = await startWithAgent();
  assert.equal(room.of(HELLO)[0]!.body['lv'], 1);
  assert.equal(tap.options.levelBins, 8192);
  const serve = room.methods.get(LEVELS)!;
  assert.ok(serve, 'registered on the Room');
  // times count from the companion's start (clockOrigin, 1 000 000 ms here) both ways
  const reply = JSON.parse(await serve({ callerIdentity: 'agent-1', payload: '{"v":1,"t":100.55,"n":3}' }));
  assert.deepEqual(reply, { v: 1, t: 100, w: 1, lv: 'QQQ' }); // the bin that plays at 1 000 100.55 ms
  assert.deepEqual(tap.levelsAsked.at(-1), [1_000_100.55, 3, 1]);
  assert.equal(reporter.stats.levelsServed, 1);
  const wide = JSON.parse(await serve({ callerIdentity: 'agent-1', payload: '{"v":1,"t":100,"n":2,"w":2}' }));
  assert.deepEqual(wide, { v: 1, t: 100, w: 2, lv: 'QQ' });
  assert.deepEqual(tap.levelsAsked.at(-1), [1_000_100, 2, 2]);
  // another participant, a malformed or oversized request: refused (an application error)
  await assert.rejects(serve({ callerIdentity: 'user-9', payload: '{"v":1,"t":500100,"n":3}' }));
  await assert.rejects(serve({ callerIdentity: 'agent-1', payload: '{"v":1,"t":"x","n":3}' }));
  await assert.rejects(serve({ callerIdentity: 'agent-1', payload: '{"v":1,"t":500100,"n":257}' }));
  await assert.rejects(serve({ callerIdentity: 'agent-1', payload: '{"v":2,"t":500100,"n":3}' }));
  for (const w of ['0', '11', '1.5', '"2"']) {
    await assert.rejects(serve({ callerIdentity: 'agent-1', payload: `{"v":1,"t":500100,"n":3,"w":${w}}` }), /w must be 1 to 10/);
  }
  assert.equal(tap.levelsAsked.length, 2);
  reporter.stop();
  assert.equal(room.methods.has(LEVELS), false, 'stop unregisters it');
});

test('an agent that does not ask for levels gets none, and the tap keeps none', async () => {
  room.helloExtra = { env_bins: 64 }; // an older agent: no lv in its reply
  const { reporter, tap } = await startWithAgent();
  assert.equal(tap.options.levelBins, 0);
  const serve = room.methods.get(LEVELS)!;
  await assert.rejects(serve({ callerIdentity: 'agent-1', payload: '{"v":1,"t":500100,"n":3}' }));
  reporter.stop();
});

test('a Room of livekit-client before 2.9 takes the method on its local participant', async () => {
  const host = new Map<string, unknown>();
  const r = room as unknown as Record<string, unknown>;
  r['registerRpcMethod'] = undefined;
  Object.assign(room.localParticipant, {
    registerRpcMethod: (m: string, h: unknown) => host.set(m, h),
    unregisterRpcMethod: (m: string) => host.delete(m),
  });
  const { reporter } = await startWithAgent();
  assert.ok(host.has(LEVELS));
  assert.equal(room.of(HELLO)[0]!.body['lv'], 1);
  reporter.stop();
  assert.equal(host.has(LEVELS), false);
});

test('a Room where the method is taken: the hello offers no levels, and it says why', async () => {
  room.registerRpcMethod(LEVELS, async () => 'someone else');
  const { reporter } = await startWithAgent();
  assert.equal(room.of(HELLO)[0]!.body['lv'], undefined);
  assert.equal(errors.length, 1);
  reporter.stop();
  assert.equal(room.methods.has(LEVELS), true, "another's handler stays");
});

test('a stand-in Room with no RPC methods at all: no levels, and no error', async () => {
  (room as unknown as Record<string, unknown>)['registerRpcMethod'] = undefined;
  const { reporter } = await startWithAgent();
  assert.equal(room.of(HELLO)[0]!.body['lv'], undefined);
  assert.deepEqual(errors, []);
  reporter.stop();
});
