/**
 * Taps the agent's audio in the graph that renders it, and dates samples at the output device.
 *
 * - `plugin`: the Room uses `webAudioMix`; livekit-client renders the track through its own
 *   AudioContext, and `RemoteAudioTrack.setWebAudioPlugins` (marked internal/experimental in
 *   livekit-client) puts our worklet between the track's source node and its gain node.
 * - `own-graph`: the companion renders the track itself, `MediaStreamAudioSourceNode` ->
 *   worklet -> destination, in its own AudioContext, and mutes the attached elements (which
 *   stay attached: Chromium only pulls remote WebRTC audio for a stream an element plays).
 */
import type { RemoteAudioTrack } from 'livekit-client';

import type { TapPath } from './protocol.js';
import { PROCESSOR_NAME, workletSource } from './worklet.js';

/** What the reporter needs from a tap; tests provide fakes. */
export interface Tap {
  readonly path: Exclude<TapPath, 'none'>;
  /** False once the graph it sits in was replaced (the reporter then taps again). */
  readonly valid: boolean;
  /** Client-clock ms at which the sample at AudioContext time `contextTime` leaves the device. */
  toClientMs(contextTime: number): number;
  /**
   * Which dating the last `toClientMs` used: the output timestamp; a stamp at the render point
   * (Firefox) plus the latency; or currentTime + latency.
   */
  readonly dating: 'output-timestamp' | 'render-timestamp' | 'latency' | 'none';
  /**
   * From the receiver's stats: `jb`, the jitter buffer delay in ms over the interval since the
   * last call; `rx`, the receive-side delay (`jb` + output latency), for the agent's prior
   * before its first match; and `net`, half the ICE candidate pair's current round trip in
   * ms. Any may be missing.
   */
  receivePath(): Promise<ReceivePath>;
  /**
   * The device output's levels (LevelRing's encoding), up to `n` of `w` ms each, from the
   * 1 ms bin that plays at client ms `fromClientMs`: `t`, the client ms at which the first one
   * started playing; null when none are kept (a tap without levels, or not yet played). Never
   * hangs.
   */
  levels?(fromClientMs: number, n: number, w: number): Promise<{ t: number; lv: string } | null>;
  setParams(threshold: number, gapSeconds: number): void;
  resume(): Promise<void>;
  close(): void;
}

/** An onset: its AudioContext time, the silence before it, and its envelope (if asked for). */
export type OnsetSink = (contextTime: number, gapSeconds: number, envelope?: string) => void;

export interface ReceivePath {
  rx?: number;
  net?: number;
  jb?: number;
  /** `addedDelay` at the read */
  ad?: [number, number];
}

type Stats = Record<string, unknown>;
const num = (s: Stats | undefined, key: string): number | undefined => {
  const v = s?.[key];
  return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
};

/**
 * The audio the receiver's jitter buffer (NetEq) has added to its playout since the track's
 * start, as its cumulative counters stand at the read: `[ms, missed]`, the ms of concealment
 * and stretching (`insertedSamplesForDeceleration`) less `removedSamplesForAcceleration`, and
 * the packets lost or discarded so far. The device plays without a break, so while no packet
 * is missed its path delay moves by exactly those ms, a network step included; concealment
 * that stands in for a missed packet moves nothing, so the agent uses the ms only between
 * readings with the same `missed`. Undefined when the browser lacks a counter.
 */
export function addedDelay(s: Stats, report?: { get(id: string): unknown }): [number, number] | undefined {
  const concealed = num(s, 'concealedSamples');
  const inserted = num(s, 'insertedSamplesForDeceleration');
  const removed = num(s, 'removedSamplesForAcceleration');
  const lost = num(s, 'packetsLost');
  const discarded = num(s, 'packetsDiscarded');
  if ([concealed, inserted, removed, lost, discarded].includes(undefined)) return undefined;
  const codecId = s['codecId'];
  const codec = typeof codecId === 'string' ? (report?.get(codecId) as Stats | undefined) : undefined;
  const rate = num(codec, 'clockRate') ?? 48000;
  return [((concealed! + inserted! - removed!) / rate) * 1000, lost! + discarded!];
}

export interface TapOptions {
  path: 'auto' | 'plugin' | 'own-graph';
  audioContext?: AudioContext;
  workletUrl?: string;
  webAudioMix: boolean;
  /** `latency`: never use getOutputTimestamp (see PlayoutReporterOptions.dating). */
  dating?: 'auto' | 'latency';
  threshold: number;
  gapSeconds: number;
  /** 1 ms bins of each onset's envelope (the agent's `env_bins`); 0: none. */
  envelopeBins?: number;
  /** ms of 1 ms bins the worklet keeps for `levels()`; 0: none. */
  levelBins?: number;
}

export type TapFactory = (
  track: RemoteAudioTrack,
  options: TapOptions,
  onOnset: OnsetSink,
) => Promise<Tap>;

/** The path this browser and Room allow, before any track exists. */
export function choosePath(options: Pick<TapOptions, 'path' | 'webAudioMix'>): TapPath {
  const g = globalThis as { AudioWorkletNode?: unknown; AudioContext?: unknown };
  if (typeof g.AudioWorkletNode !== 'function' || typeof g.AudioContext !== 'function') {
    return 'none';
  }
  if (options.path !== 'auto') return options.path;
  return options.webAudioMix ? 'plugin' : 'own-graph';
}

/** How close a stamp's age must be to its lag to count as a render-point stamp (Firefox). */
const RENDER_POINT_TOLERANCE_MS = 3;
/** Net votes of stamps that decide a context's kind of stamp for good. */
const RENDER_POINT_VOTES = 5;
/**
 * How far ahead of now a stamp's performanceTime may be (clock rounding): further ahead, it is
 * not a time something was presented. WebKitGTK 2.50 adds contextTime to it (it runs ahead by
 * the context's age), which dated every onset seconds late.
 */
const STAMP_AHEAD_MS = 5;
/** How long a levels request waits for the worklet (it answers between two render quanta). */
const LEVELS_WAIT_MS = 500;

const loaded = new WeakMap<BaseAudioContext, Promise<void>>();

async function loadWorklet(ctx: AudioContext, url?: string): Promise<void> {
  let p = loaded.get(ctx);
  if (!p) {
    let src = url;
    let blobUrl: string | undefined;
    if (!src) {
      blobUrl = URL.createObjectURL(new Blob([workletSource()], { type: 'text/javascript' }));
      src = blobUrl;
    }
    p = ctx.audioWorklet.addModule(src).finally(() => {
      if (blobUrl) URL.revokeObjectURL(blobUrl);
    });
    loaded.set(ctx, p);
  }
  return p;
}

interface TrackInternals {
  audioContext?: AudioContext;
  webAudioPluginNodes?: AudioNode[];
}

/** The browser tap: see the module comment for the two paths. */
export const createBrowserTap: TapFactory = async (track, options, onOnset) => {
  const internals = track as unknown as TrackInternals;
  const path = choosePath(options);
  if (path === 'none') throw new Error('no AudioWorklet in this browser');
  if (path === 'plugin' && !(internals.audioContext && 'setWebAudioPlugins' in track)) {
    // with webAudioMix the SDK plays the track through its own graph: a graph of ours would
    // play it twice. The reporter tries again at its next clock exchange.
    throw new Error('webAudioMix: the track has no AudioContext yet (or no setWebAudioPlugins)');
  }

  const ctx =
    path === 'plugin'
      ? internals.audioContext!
      : (options.audioContext ?? new AudioContext({ latencyHint: 'interactive' }));
  const ownsContext = path === 'own-graph' && !options.audioContext;
  await loadWorklet(ctx, options.workletUrl);
  const node = new AudioWorkletNode(ctx, PROCESSOR_NAME, {
    numberOfInputs: 1,
    numberOfOutputs: 1,
    outputChannelCount: [2],
    processorOptions: {
      threshold: options.threshold,
      gap: options.gapSeconds,
      envBins: options.envelopeBins ?? 0,
      levelBins: options.levelBins ?? 0,
    },
  });
  // levels requests waiting for the worklet's answer, by id
  const asked = new Map<number, (r: { from: number | null; lv: string } | null) => void>();
  let nextAsk = 1;
  node.port.onmessage = (e: MessageEvent) => {
    const m = e.data as { type?: string; t?: number; gap?: number; env?: unknown };
    if (m.type === 'onset' && typeof m.t === 'number' && typeof m.gap === 'number') {
      onOnset(m.t, m.gap, typeof m.env === 'string' ? m.env : undefined);
    } else if (m.type === 'levels') {
      const r = e.data as { id?: number; from?: number | null; lv?: string };
      const done = typeof r.id === 'number' ? asked.get(r.id) : undefined;
      if (done) done({ from: typeof r.from === 'number' ? r.from : null, lv: String(r.lv ?? '') });
    }
  };

  let restore: () => void;
  let valid = true;
  if (path === 'plugin') {
    const before = [...(internals.webAudioPluginNodes ?? [])];
    track.setWebAudioPlugins([...before, node]);
    // The SDK rebuilds the graph in a new context when the room's context changes; our node
    // belongs to this one and would break that rebuild. So, on this track instance only, take
    // it out of the plugin list first; the reporter then taps again in the new context.
    const own = track as unknown as { setAudioContext: (c: AudioContext | undefined) => void };
    const hadOwn = Object.prototype.hasOwnProperty.call(own, 'setAudioContext');
    const original = own.setAudioContext;
    own.setAudioContext = function (this: unknown, c: AudioContext | undefined) {
      if (c !== ctx) {
        valid = false;
        internals.webAudioPluginNodes = before;
      }
      return original.call(this, c);
    };
    restore = () => {
      if (hadOwn) own.setAudioContext = original;
      else delete (own as { setAudioContext?: unknown }).setAudioContext;
      if (valid) track.setWebAudioPlugins(before);
    };
  } else {
    const source = ctx.createMediaStreamSource(new MediaStream([track.mediaStreamTrack]));
    source.connect(node);
    node.connect(ctx.destination);
    // The elements are muted only while our context runs: a context the autoplay policy keeps
    // suspended plays nothing, and the user must then still hear the element.
    const muted = new Map<HTMLMediaElement, boolean>();
    const applyMute = () => {
      if (ctx.state === 'running') {
        for (const el of track.attachedElements) {
          if (!muted.has(el)) muted.set(el, el.muted);
          el.muted = true;
        }
      } else {
        for (const [el, was] of muted) el.muted = was;
        muted.clear();
      }
    };
    applyMute();
    // elements attached later are muted too (livekit-client's TrackEvent.ElementAttached)
    track.on('elementAttached', applyMute);
    ctx.addEventListener('statechange', applyMute);
    restore = () => {
      track.off('elementAttached', applyMute);
      ctx.removeEventListener('statechange', applyMute);
      source.disconnect();
      node.disconnect();
      for (const [el, was] of muted) el.muted = was;
    };
  }

  let dating: Tap['dating'] = 'none';
  // Fallback dating: performance.now() - currentTime, whose smallest recent value is read
  // right after currentTime moved (it moves in audio-callback steps, stale in between).
  const offsets: number[] = [];
  const clockMap = (): number => {
    offsets.push(performance.now() - ctx.currentTime * 1000);
    if (offsets.length > 64) offsets.shift();
    return Math.min(...offsets);
  };
  // sampled every few ms, only while the fallback is in use (no or an insane output
  // timestamp); started at once where it is known to be needed, so it is warm by the first
  // onset (measured in Chromium: the first onset was dated 8 ms off when it started then)
  let sampler: ReturnType<typeof setInterval> | undefined;
  const stamps = options.dating !== 'latency' && typeof ctx.getOutputTimestamp === 'function';
  if (!stamps) sampler = setInterval(clockMap, 3);
  // the whole way from the graph to the device: the context's own buffering (baseLatency;
  // Chromium 10.7 ms, Firefox 0) plus the system's (outputLatency)
  const latency = () => (ctx.baseLatency || 0) + (ctx.outputLatency || 0);
  // Firefox (153) dates its stamp back by as much as its contextTime lags currentTime, so it
  // maps the render point, not the output: the stamp's age equals that lag (Chromium's age is
  // under one callback period, its lag the whole latency). That is a property of the
  // browser's context, decided once from several stamps while it runs (Firefox rounds
  // performance.now() to 1 ms with jitter, so one stamp can look like the other kind: the
  // first onset of a context was once dated 38.9 ms early that way). Measured against a
  // recording: 36-40 ms early without the correction.
  type Stamp = { contextTime: number; performanceTime: number };
  const saneStamp = (): Stamp | undefined => {
    const ts = stamps ? ctx.getOutputTimestamp() : undefined;
    // WebKit before 2024 (bug 264247) scaled contextTime wrongly, and WebKitGTK's
    // performanceTime runs ahead of now: trust only a sane stamp (WebKitGTK's passes for
    // the context's first 6 ms, a few ms off at most)
    if (
      ts &&
      ts.contextTime &&
      ts.performanceTime &&
      Math.abs(ts.contextTime - ctx.currentTime) < 1 &&
      ts.performanceTime - performance.now() < STAMP_AHEAD_MS
    ) {
      return { contextTime: ts.contextTime, performanceTime: ts.performanceTime };
    }
    return undefined;
  };
  let renderPoint: boolean | undefined;
  let votes = 0;
  const judge = (ts: Stamp): boolean => {
    if (renderPoint !== undefined) return renderPoint;
    const lag = (ctx.currentTime - ts.contextTime) * 1000;
    const age = performance.now() - ts.performanceTime;
    if (ctx.state === 'running' && lag > 5) {
      votes += Math.abs(age - lag) < RENDER_POINT_TOLERANCE_MS ? 1 : -1;
      if (Math.abs(votes) >= RENDER_POINT_VOTES) renderPoint = votes > 0;
    }
    return votes > 0;
  };
  let judging: ReturnType<typeof setInterval> | undefined;
  let lastJb: [number, number] = [0, 0];
  const tap: Tap = {
    path,
    get valid() {
      return valid;
    },
    get dating() {
      return dating;
    },
    toClientMs(contextTime: number): number {
      const ts = saneStamp();
      if (ts) {
        if (sampler !== undefined) clearInterval(sampler);
        sampler = undefined;
        const at = performance.timeOrigin + ts.performanceTime + (contextTime - ts.contextTime) * 1000;
        if (judge(ts)) {
          dating = 'render-timestamp';
          return at + latency() * 1000;
        }
        dating = 'output-timestamp';
        return at;
      }
      dating = 'latency';
      sampler ??= setInterval(clockMap, 3);
      return performance.timeOrigin + clockMap() + (contextTime + latency()) * 1000;
    },
    async receivePath(): Promise<ReceivePath> {
      const out: ReceivePath = {};
      try {
        const report = await track.getRTCStatsReport();
        report?.forEach((s: Record<string, unknown>) => {
          if (s['type'] === 'inbound-rtp' && s['kind'] === 'audio') {
            const ad = addedDelay(s, report);
            if (ad !== undefined) out.ad = ad;
            const d = s['jitterBufferDelay'];
            const n = s['jitterBufferEmittedCount'];
            if (typeof d === 'number' && typeof n === 'number') {
              // over the interval since the last read: the lifetime average lags a change
              const [d0, n0] = lastJb;
              if (n > n0) {
                out.jb = ((d - d0) / (n - n0)) * 1000;
                out.rx = out.jb + latency() * 1000;
              }
              lastJb = [d, n];
            }
          } else if (s['type'] === 'candidate-pair' && (s['nominated'] === true || s['selected'] === true)) {
            const rtt = s['currentRoundTripTime'];
            if (typeof rtt === 'number' && s['state'] === 'succeeded') out.net = (rtt * 1000) / 2;
          }
        });
      } catch {
        // no stats: the agent falls back to its own prior
      }
      return out;
    },
    async levels(fromClientMs: number, n: number, w: number): Promise<{ t: number; lv: string } | null> {
      if (!(options.levelBins && options.levelBins > 0)) return null;
      // a bin is a ms of context time: the mapping is linear, so context time 0 anchors it
      const from = Math.floor(fromClientMs - tap.toClientMs(0));
      const id = nextAsk++;
      const r = await new Promise<{ from: number | null; lv: string } | null>((resolve) => {
        // a suspended context runs no worklet code: answer null rather than wait
        const timer = setTimeout(() => {
          asked.delete(id);
          resolve(null);
        }, LEVELS_WAIT_MS);
        asked.set(id, (v) => {
          clearTimeout(timer);
          asked.delete(id);
          resolve(v);
        });
        node.port.postMessage({ type: 'levels', id, from, n, w });
      });
      if (!r || r.from === null || !r.lv) return null;
      return { t: tap.toClientMs(r.from / 1000), lv: r.lv };
    },
    setParams(threshold: number, gapSeconds: number): void {
      node.port.postMessage({ type: 'params', threshold, gap: gapSeconds });
    },
    async resume(): Promise<void> {
      if (ctx.state !== 'running') await ctx.resume();
    },
    close(): void {
      if (sampler !== undefined) clearInterval(sampler);
      if (judging !== undefined) clearInterval(judging);
      node.port.postMessage({ type: 'stop' });
      node.port.onmessage = null;
      for (const done of [...asked.values()]) done(null);
      restore();
      if (ownsContext) void ctx.close();
    },
  };
  if (stamps) {
    // judged before the first onset needs it: a stamp every 50 ms until decided. A running
    // context's stamps that are not sane (WebKitGTK's) start the fallback's sampler, so the
    // first onset is dated warm too, and after 20 in a row judging stops (none will be)
    let refused = 0;
    judging = setInterval(() => {
      const ts = saneStamp();
      if (ts) {
        // a context that had not started (contextTime 0) while running: the sampler is
        // not needed once its stamps are sane
        if (refused > 0 && sampler !== undefined) {
          clearInterval(sampler);
          sampler = undefined;
        }
        refused = 0;
        judge(ts);
      } else if (ctx.state === 'running') {
        sampler ??= setInterval(clockMap, 3);
        refused += 1;
      }
      if (renderPoint !== undefined || refused >= 20) {
        clearInterval(judging);
        judging = undefined;
      }
    }, 50);
  }
  if (ctx.state !== 'running') void ctx.resume().catch(() => undefined);
  return tap;
};
