/** Protocol v1 (docs/client-playout.md): method names and payload shapes. */

export const PROTOCOL_VERSION = 1;
export const HELLO = 'lkseg.playout.hello';
export const SYNC = 'lkseg.playout.sync';
export const REPORT = 'lkseg.playout.report';
/** Served by the companion: the agent asks for the device's levels around a response. */
export const LEVELS = 'lkseg.playout.levels';
/** The most levels one levels request may ask for. */
export const MAX_LEVEL_BINS = 256;
/** The widest level (ms) a levels request may ask for. */
export const MAX_LEVEL_WIDTH = 10;
/** The agent refuses larger payloads. */
export const MAX_PAYLOAD = 1024;

export type TapPath = 'plugin' | 'own-graph' | 'none';

export interface HelloRequest {
  v: 1;
  sid: string;
  client: string;
  path: TapPath;
  /** 1: this companion serves `LEVELS` (when the agent's reply asks for it with `lv`) */
  lv?: 1;
}

export interface HelloReply {
  v: 1;
  /** detector threshold (amplitude) */
  thr: number;
  /** detector gap, ms */
  gap_ms: number;
  /** steady-state sync period, seconds */
  sync_s: number;
  /** most onsets one report may carry */
  max_onsets: number;
  /** 1 ms bins of envelope the agent wants with each onset; 0 (or absent: an older agent): none */
  env_bins: number;
  /** true: the agent will call `LEVELS` (only when the hello offered it) */
  lv: boolean;
}

/** The agent's levels request: `n` levels of `w` ms each of the device output from client ms `t` on. */
export interface LevelsRequest {
  v: 1;
  t: number;
  n: number;
  /** ms per level, 1 to MAX_LEVEL_WIDTH (absent: 1) */
  w: number;
}

/** The reply: the client ms at which the first level starts (null: none kept), their width, and the levels. */
export interface LevelsReply {
  v: 1;
  t: number | null;
  w: number;
  lv: string;
}

export interface SyncRequest {
  v: 1;
  q: number;
  /** client ms */
  t0: number;
  /** [q, t3] of the previous completed exchange */
  prev?: [number, number];
  /** receive-side delay estimate (jitter buffer + output latency), ms */
  rx?: number;
  /** network one-way estimate from the media transport (ICE round trip / 2), ms */
  net?: number;
  /** jitter buffer delay over the interval since the previous reading, ms (rx without the
   * output latency): the agent moves its path delay by its changes */
  jb?: number;
  /** at t0: [ms of audio the jitter buffer has added to its playout (made up less dropped),
   * packets missed (lost or discarded)], both cumulative from any origin: between readings
   * with the same count the agent moves its path delay by the ms' change, in place of jb's
   * (docs/client-playout.md, "ad") */
  ad?: [number, number];
}

export interface SyncReply {
  q: number;
  /** ms the agent held the request (its t2 - t1; it keeps both and completes the exchange) */
  dt: number;
}

export type ReportedOnset = [number, number] | [number, number, string];

export interface ReportRequest {
  v: 1;
  q: number;
  /** onsets: [device time in client ms, gap ms] or [device time, gap, envelope] */
  o: ReportedOnset[];
}

/** Rounds to 0.1 ms, as the protocol sends numbers. */
export function r1(x: number): number {
  return Math.round(x * 10) / 10;
}

export function parseHelloReply(text: string): HelloReply {
  const obj: unknown = JSON.parse(text);
  if (typeof obj !== 'object' || obj === null) throw new Error('hello reply is not an object');
  const o = obj as Record<string, unknown>;
  const num = (k: string, lo: number, hi: number): number => {
    const v = o[k];
    if (typeof v !== 'number' || !Number.isFinite(v) || v < lo || v > hi) {
      throw new Error(`hello reply: bad ${k}`);
    }
    return v;
  };
  if (o['v'] !== PROTOCOL_VERSION) throw new Error(`hello reply: protocol version ${String(o['v'])}`);
  return {
    v: 1,
    thr: num('thr', 0, 1),
    gap_ms: num('gap_ms', 1, 10000),
    sync_s: num('sync_s', 1, 3600),
    max_onsets: Math.floor(num('max_onsets', 1, 64)),
    env_bins: o['env_bins'] === undefined ? 0 : Math.floor(num('env_bins', 0, 64)),
    lv: o['lv'] === 1,
  };
}

export function parseLevelsRequest(text: string): LevelsRequest {
  if (text.length > MAX_PAYLOAD) throw new Error('levels request: too large');
  const o = JSON.parse(text) as Record<string, unknown> | null;
  if (typeof o !== 'object' || o === null) throw new Error('levels request: not an object');
  if (o['v'] !== PROTOCOL_VERSION) throw new Error(`levels request: protocol version ${String(o['v'])}`);
  const t = o['t'];
  const n = o['n'];
  if (typeof t !== 'number' || !Number.isFinite(t)) throw new Error('levels request: bad t');
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > MAX_LEVEL_BINS) {
    throw new Error(`levels request: n must be 1 to ${MAX_LEVEL_BINS}`);
  }
  const w = o['w'] ?? 1;
  if (typeof w !== 'number' || !Number.isInteger(w) || w < 1 || w > MAX_LEVEL_WIDTH) {
    throw new Error(`levels request: w must be 1 to ${MAX_LEVEL_WIDTH}`);
  }
  return { v: 1, t, n, w };
}

export function parseSyncReply(text: string): SyncReply {
  const o = JSON.parse(text) as Record<string, unknown>;
  const q = o['q'];
  const dt = o['dt'];
  if (typeof q !== 'number' || typeof dt !== 'number' || !Number.isFinite(dt)) {
    throw new Error('sync reply: bad shape');
  }
  return { q, dt };
}
