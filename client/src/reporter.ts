import type {
  RemoteAudioTrack,
  RemoteParticipant,
  RemoteTrack,
  RemoteTrackPublication,
  Room,
} from 'livekit-client';

import {
  HELLO,
  type HelloReply,
  type HelloRequest,
  LEVELS,
  type LevelsReply,
  PROTOCOL_VERSION,
  parseHelloReply,
  parseLevelsRequest,
  parseSyncReply,
  r1,
  REPORT,
  type ReportedOnset,
  type ReportRequest,
  SYNC,
  type SyncReply,
  type SyncRequest,
  type TapPath,
} from './protocol.js';
import {
  choosePath,
  createBrowserTap,
  type ReceivePath,
  type Tap,
  type TapFactory,
} from './tap.js';

export const CLIENT_NAME = '@livekit-segments/client/0.1.0';

export interface PlayoutReporterOptions {
  /** The agent's participant identity. Default: the first participant that is an agent. */
  agentIdentity?: string;
  /**
   * How to tap the playback path. `auto` (default): `plugin` when the Room was created with
   * `webAudioMix`, else `own-graph`. See docs/client-playout.md.
   */
  path?: 'auto' | 'plugin' | 'own-graph';
  /** `own-graph`: render in this AudioContext (e.g. one already resumed by a user gesture). */
  audioContext?: AudioContext;
  /** URL of `dist/onset-worklet.js`, for pages whose CSP forbids `blob:` worklet modules. */
  workletUrl?: string;
  /**
   * How to date a sample at the output device (docs/client-playout.md): `auto` (default) uses
   * `getOutputTimestamp()` when sane (adding the latency to a stamp at the render point, as
   * Firefox's), else `currentTime` + `baseLatency` + `outputLatency`; `latency` forces the
   * latter (for comparisons against a recording).
   */
  dating?: 'auto' | 'latency';
  /** Called with every error (RPC failures, audio setup); default: `console.warn`. */
  onError?: (err: unknown) => void;
}

export interface PlayoutReporterStats {
  path: TapPath | null;
  dating: Tap['dating'];
  syncs: number;
  reports: number;
  onsetsSent: number;
  /** request payload bytes sent so far (replies are a few bytes more per sync) */
  bytesSent: number;
  /** levels requests of the agent answered with levels, and their reply bytes */
  levelsServed: number;
  levelsBytes: number;
  lastRttMs: number | null;
}

export interface PlayoutReporter {
  /** The agent being reported to, once found. */
  readonly agentIdentity: string | undefined;
  /**
   * The client time (`performance.timeOrigin + performance.now()`, ms, whole) at which this
   * companion started: the times it sends count from it (the agent estimates the offset
   * either way, and the short numbers save about 16 bytes a sync).
   */
  readonly clockOrigin: number;
  readonly stats: Readonly<PlayoutReporterStats>;
  /** Resume the AudioContext: call from a user gesture where autoplay rules need one. */
  resume(): Promise<void>;
  /** Stop measuring and reporting; restores the track's playback as it was. */
  stop(): void;
}

/** Injected by tests; the defaults are the browser's. */
export interface ReporterDeps {
  now: () => number;
  setTimer: (fn: () => void, ms: number) => () => void;
  tapFactory: TapFactory;
  sid: () => string;
}

const defaultDeps: ReporterDeps = {
  now: () => performance.timeOrigin + performance.now(),
  setTimer: (fn, ms) => {
    const id = setTimeout(fn, ms);
    return () => clearTimeout(id);
  },
  tapFactory: createBrowserTap,
  sid: () => {
    const bytes = new Uint8Array(12);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-'[b & 63]).join('');
  },
};

const MIN_REPORT_INTERVAL_MS = 250;
const MAX_PENDING = 64;
const STARTUP_SYNCS = 4;
const STARTUP_SYNC_INTERVAL_MS = 250;
const MAX_SYNC_FAILURES = 3;
// The jitter buffer's delay is read this often; a change of JB_STEP_MS or more since the last
// one sent is sent at once (a sync), so the agent's prediction follows NetEq between onsets.
// With 1 % loss the one-second reading wanders by +-8 ms around a steady level: a smaller step
// sent that noise (24 syncs in a 40 s session, 311 bytes per response in all).
// Only this poll reads the receiver's stats once it runs, so each reading averages the second
// before the sync that carries it, as the agent dates it (other syncs carry no jb).
const JB_POLL_MS = 1000;
const JB_STEP_MS = 10;
// The same poll sends the audio the jitter buffer added (`ad`, tap.ts addedDelay) when it moved
// this much: an instant reading of exact counters, so a smaller step than jb's. Across a missed
// packet its change is no use to the agent (concealment for a lost packet moves no delay):
// after one it is sent for a move only once AD_QUIET_MS passed with none missed (with 1 %
// loss most seconds miss one, and those syncs would be waste); every jb sync carries it.
const AD_STEP_MS = 5;
const AD_QUIET_MS = 2000;
const AD_MAX_MS = 1e7;
// ms of 1 ms bins kept for the agent's levels requests (it asks within about a second)
const LEVEL_RING_MS = 8192;

/** Where RPC methods are registered: the Room from livekit-client 2.9, else localParticipant. */
interface RpcHost {
  registerRpcMethod(method: string, handler: (data: RpcCall) => Promise<string>): void;
  unregisterRpcMethod(method: string): void;
}
interface RpcCall {
  callerIdentity: string;
  payload: string;
}

function isAgent(p: RemoteParticipant): boolean {
  const q = p as unknown as { isAgent?: boolean; kind?: number; attributes?: Record<string, string> };
  // ParticipantInfo_Kind.AGENT is 4; `isAgent` exists from livekit-client 2.8
  return q.isAgent === true || q.kind === 4 || 'lk.agent.state' in (q.attributes ?? {});
}

function audioTrackOf(p: RemoteParticipant): RemoteAudioTrack | undefined {
  for (const pub of p.trackPublications.values() as IterableIterator<RemoteTrackPublication>) {
    if (pub.kind === 'audio' && pub.track) return pub.track as RemoteAudioTrack;
  }
  return undefined;
}

class Reporter implements PlayoutReporter {
  private agent: string | undefined;
  private params: HelloReply | null = null;
  private q = 0;
  private prev: [number, number] | undefined;
  private agentSynced = false;
  private pending: ReportedOnset[] = [];
  private tap: Tap | undefined;
  private tapTrack: RemoteAudioTrack | undefined;
  private tapping = false;
  private epoch = 0; // bumped on reset: late async results of an older agent are dropped
  private timers = new Set<() => void>();
  private chain: Promise<void> = Promise.resolve();
  private reportInFlight = false;
  private lastReportAt = -Infinity;
  private flushTimer: (() => void) | undefined;
  private helloAttempts = 0;
  private syncFailures = 0;
  private rehellos = 0; // survives reset(): the backoff of re-hellos after refused syncs
  private sentJb: number | undefined;
  private sentAd: [number, number] | undefined;
  // `ad` continues across taps: a new track's counters start from nothing, so its readings
  // are shifted to take up where the last tap's left off, with one more missed packet: the
  // agent cannot know how the delay moved at the switch
  private adTap: Tap | undefined;
  private adShift: [number, number] = [0, 0];
  private adLast: [number, number] | undefined;
  private missedSince: [number, number] | undefined; // missed packets, and since when
  private lastPath: ReceivePath | undefined; // the jitter buffer poll's latest reading
  private readTap: Tap | undefined; // the tap last read, and when
  private readAt: number | undefined;
  private stopped = false;
  readonly stats: PlayoutReporterStats = {
    path: null,
    dating: 'none',
    syncs: 0,
    reports: 0,
    onsetsSent: 0,
    bytesSent: 0,
    levelsServed: 0,
    levelsBytes: 0,
    lastRttMs: null,
  };
  private levelsHost: RpcHost | undefined;
  readonly clockOrigin: number;

  constructor(
    private readonly room: Room,
    private readonly options: PlayoutReporterOptions,
    private readonly deps: ReporterDeps,
  ) {
    this.clockOrigin = Math.floor(deps.now());
  }

  /** Client time as sent: ms since `clockOrigin`. */
  private wireNow(): number {
    return this.deps.now() - this.clockOrigin;
  }

  get agentIdentity(): string | undefined {
    return this.agent;
  }

  start(): void {
    this.room.on('trackSubscribed', this.onTrackSubscribed);
    this.room.on('trackUnsubscribed', this.onTrackUnsubscribed);
    this.room.on('participantConnected', this.onParticipantConnected);
    this.room.on('participantDisconnected', this.onParticipantDisconnected);
    this.room.on('disconnected', this.onDisconnected);
    this.registerLevels();
    this.scan();
  }

  private registerLevels(): void {
    const room = this.room as unknown as Partial<RpcHost>;
    const host = (
      typeof room.registerRpcMethod === 'function' ? room : this.room.localParticipant
    ) as Partial<RpcHost>;
    // a stand-in Room without RPC methods (a test's): no levels, as with an older companion
    if (typeof host.registerRpcMethod !== 'function') return;
    try {
      host.registerRpcMethod(LEVELS, this.onLevels);
      this.levelsHost = host as RpcHost;
    } catch (err) {
      // another companion on this Room serves it: this one does without (hello says so)
      this.error(err);
    }
  }

  /** The agent's levels request (docs/client-playout.md, "Levels"). */
  private readonly onLevels = async (data: RpcCall): Promise<string> => {
    if (this.stopped || !this.agent || data.callerIdentity !== this.agent || !this.params?.lv) {
      throw new Error('levels: not asked for by this agent');
    }
    const req = parseLevelsRequest(data.payload);
    const got = this.tap?.levels ? await this.tap.levels(req.t + this.clockOrigin, req.n, req.w) : null;
    const reply: LevelsReply = got && Number.isFinite(got.t)
      ? { v: PROTOCOL_VERSION, t: r1(got.t - this.clockOrigin), w: req.w, lv: got.lv.slice(0, req.n) }
      : { v: PROTOCOL_VERSION, t: null, w: req.w, lv: '' };
    const text = JSON.stringify(reply);
    if (reply.t !== null) this.stats.levelsServed += 1;
    this.stats.levelsBytes += text.length;
    return text;
  };

  async resume(): Promise<void> {
    await this.tap?.resume();
  }

  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.room.off('trackSubscribed', this.onTrackSubscribed);
    this.room.off('trackUnsubscribed', this.onTrackUnsubscribed);
    this.room.off('participantConnected', this.onParticipantConnected);
    this.room.off('participantDisconnected', this.onParticipantDisconnected);
    this.room.off('disconnected', this.onDisconnected);
    this.levelsHost?.unregisterRpcMethod(LEVELS);
    this.levelsHost = undefined;
    this.reset();
  }

  // -- room events --

  private readonly onTrackSubscribed = (
    _track: RemoteTrack,
    _pub: RemoteTrackPublication,
    p: RemoteParticipant,
  ): void => {
    if (p.identity === this.agent || !this.agent) this.scan();
  };

  private readonly onTrackUnsubscribed = (
    track: RemoteTrack,
    _pub: RemoteTrackPublication,
    p: RemoteParticipant,
  ): void => {
    if (p.identity === this.agent && track === this.tapTrack) this.closeTap();
  };

  private readonly onParticipantConnected = (): void => {
    if (!this.agent) this.scan();
  };

  private readonly onParticipantDisconnected = (p: RemoteParticipant): void => {
    if (p.identity === this.agent) {
      this.reset();
      this.scan();
    }
  };

  private readonly onDisconnected = (): void => {
    this.stop();
  };

  // -- state --

  private error(err: unknown): void {
    (this.options.onError ?? ((e: unknown) => console.warn('livekit-segments client:', e)))(err);
  }

  private later(fn: () => void, ms: number): void {
    const cancel = this.deps.setTimer(() => {
      this.timers.delete(cancel);
      fn();
    }, ms);
    this.timers.add(cancel);
  }

  private reset(): void {
    this.epoch += 1;
    for (const cancel of this.timers) cancel();
    this.timers.clear();
    this.flushTimer = undefined;
    this.closeTap();
    this.agent = undefined;
    this.params = null;
    this.prev = undefined;
    this.agentSynced = false;
    this.pending = [];
    this.helloAttempts = 0;
    this.syncFailures = 0;
    this.sentJb = undefined;
    this.sentAd = undefined;
    this.adLast = undefined;
    this.missedSince = undefined;
    this.stats.path = null;
  }

  private closeTap(): void {
    this.lastPath = undefined; // the next tap reads its own
    if (this.tap) {
      try {
        this.tap.close();
      } catch (err) {
        this.error(err);
      }
    }
    this.tap = undefined;
    this.tapTrack = undefined;
  }

  private scan(): void {
    if (this.stopped) return;
    if (!this.agent) {
      for (const p of this.room.remoteParticipants.values()) {
        const wanted = this.options.agentIdentity;
        if (wanted ? p.identity === wanted : isAgent(p)) {
          this.agent = p.identity;
          void this.hello();
          break;
        }
      }
    }
    void this.tapIfReady();
  }

  private webAudioMix(): boolean {
    const opts = (this.room as unknown as { options?: { webAudioMix?: unknown } }).options;
    return Boolean(opts?.webAudioMix);
  }

  private path(): TapPath {
    return choosePath({ path: this.options.path ?? 'auto', webAudioMix: this.webAudioMix() });
  }

  private async rpc(method: string, payload: object): Promise<string> {
    const text = JSON.stringify(payload);
    this.stats.bytesSent += text.length;
    return this.room.localParticipant.performRpc({
      destinationIdentity: this.agent!,
      method,
      payload: text,
      responseTimeout: 5000,
    });
  }

  /** One RPC at a time, in order: the agent requires increasing sequence numbers. */
  private enqueue(fn: () => Promise<void>): Promise<void> {
    this.chain = this.chain.then(fn).catch((err: unknown) => this.error(err));
    return this.chain;
  }

  private async hello(): Promise<void> {
    const epoch = this.epoch;
    const path = this.path();
    const sid = this.deps.sid();
    this.stats.path = path;
    await this.enqueue(async () => {
      if (epoch !== this.epoch) return;
      try {
        const hello: HelloRequest = { v: PROTOCOL_VERSION, sid, client: CLIENT_NAME, path };
        if (this.levelsHost) hello.lv = 1;
        const reply = await this.rpc(HELLO, hello);
        if (epoch !== this.epoch) return;
        this.params = parseHelloReply(reply);
        this.q = 0;
      } catch (err) {
        if (epoch !== this.epoch) return;
        // the agent may not have enabled client playout yet: retry, backing off to a minute
        this.helloAttempts += 1;
        this.later(() => void this.hello(), Math.min(60000, 1000 * 2 ** this.helloAttempts));
        throw err;
      }
    });
    if (epoch !== this.epoch || !this.params || path === 'none') return;
    for (let i = 0; i < STARTUP_SYNCS; i++) {
      this.later(() => void this.sync(epoch), i * STARTUP_SYNC_INTERVAL_MS);
    }
    // the poll first: a sync due at the same moment then takes its reading
    this.later(() => void this.watchJitterBuffer(epoch), JB_POLL_MS);
    this.later(() => this.syncForever(epoch), STARTUP_SYNCS * STARTUP_SYNC_INTERVAL_MS);
    await this.tapIfReady();
  }

  private async watchJitterBuffer(epoch: number): Promise<void> {
    if (epoch !== this.epoch || !this.params) return;
    this.later(() => void this.watchJitterBuffer(epoch), JB_POLL_MS);
    if (!this.tap || !this.tap.valid) return;
    // the reading averages the interval since the tap's previous one: a tap's first covers
    // its track's life, and one soon after a sync's own read covers a moment
    const previous = this.readTap === this.tap ? this.readAt : undefined;
    // its own read time: a sync's read may start while this one is pending
    const [path, readAt] = await this.readPath(this.tap);
    if (epoch !== this.epoch) return;
    this.lastPath = path;
    // jb averages the interval since the previous read: not over a whole second, not sent
    const jbOk =
      previous !== undefined &&
      readAt - previous >= JB_POLL_MS * 0.9 &&
      path.jb !== undefined &&
      Number.isFinite(path.jb);
    const jb = jbOk ? path.jb : undefined;
    const jbMoved = jb !== undefined && (this.sentJb === undefined || Math.abs(jb - this.sentJb) >= JB_STEP_MS);
    const ad = path.ad;
    const sent = this.sentAd;
    const quiet = (m: number) => m === sent?.[1] || readAt - this.missedSince![1] >= AD_QUIET_MS;
    const adMoved = ad !== undefined && (sent === undefined || (Math.abs(ad[0] - sent[0]) >= AD_STEP_MS && quiet(ad[1])));
    if (jbMoved || adMoved) await this.sync(epoch, { ...path, jb });
  }

  /** The tap's receive path, and when it was read. */
  private async readPath(tap: Tap): Promise<[ReceivePath, number]> {
    const readAt = this.deps.now();
    this.readTap = tap;
    this.readAt = readAt;
    const path = await tap.receivePath();
    const ad = path.ad;
    if (ad !== undefined && ad.every(Number.isFinite)) {
      if (this.adTap !== tap) {
        const last = this.adLast;
        this.adShift = last ? [last[0] - ad[0], last[1] + 1 - ad[1]] : [0, 0];
      }
      this.adTap = tap;
      path.ad = [ad[0] + this.adShift[0], ad[1] + this.adShift[1]];
      this.adLast = path.ad;
      if (path.ad[1] !== this.missedSince?.[0]) this.missedSince = [path.ad[1], readAt];
    } else {
      delete path.ad;
    }
    return [path, readAt];
  }

  private syncForever(epoch: number): void {
    if (epoch !== this.epoch || !this.params) return;
    void this.sync(epoch);
    this.later(() => this.syncForever(epoch), this.params.sync_s * 1000);
  }

  private async sync(epoch: number, read?: ReceivePath): Promise<void> {
    if (this.tap && !this.tap.valid) this.closeTap();
    void this.tapIfReady(); // a track that could not be tapped yet, or a replaced graph
    // a sync between polls takes the poll's reading: a read of its own would cut the poll's
    // second short (before the first poll, the syncs after hello read for themselves)
    const path = read ?? this.lastPath ?? (this.tap ? (await this.readPath(this.tap))[0] : {});
    await this.enqueue(async () => {
      if (epoch !== this.epoch) return;
      const q = ++this.q;
      const req: SyncRequest = { v: PROTOCOL_VERSION, q, t0: r1(this.wireNow()) };
      const prev = this.prev;
      if (prev) req.prev = prev;
      const clamp = (x: number) => r1(Math.min(Math.max(x, 0), 5000));
      // rx and net serve the agent's prior only: a sync sent for a jitter buffer change
      // (`read` given) leaves them out (about 20 bytes of the 300 a response may cost)
      if (!read && path.rx !== undefined && Number.isFinite(path.rx)) req.rx = clamp(path.rx);
      if (!read && path.net !== undefined && Number.isFinite(path.net)) req.net = clamp(path.net);
      // jb only from the poll (`read`): the agent dates it to the second before t0
      if (read && path.jb !== undefined && Number.isFinite(path.jb)) req.jb = clamp(path.jb);
      // ad likewise, an instant reading: the agent dates it at t0
      if (read && path.ad !== undefined) {
        req.ad = [r1(Math.min(Math.max(path.ad[0], -AD_MAX_MS), AD_MAX_MS)), path.ad[1]];
      }
      let reply: SyncReply;
      try {
        reply = parseSyncReply(await this.rpc(SYNC, req));
      } catch (err) {
        // an agent that restarted (same identity) knows no hello: after a few refused syncs
        // in a row, start over with a new hello
        this.syncFailures += 1;
        if (epoch === this.epoch && this.syncFailures >= MAX_SYNC_FAILURES) {
          const agent = this.agent;
          this.reset();
          this.agent = agent;
          // backing off (1, 2, 4 ... 60 s) while the agent keeps refusing
          this.rehellos += 1;
          this.later(() => void this.hello(), Math.min(60000, 500 * 2 ** this.rehellos));
        }
        throw err;
      }
      this.syncFailures = 0;
      this.rehellos = 0;
      // what the agent has now; not a reply that came after a reset (its agent is gone)
      if (epoch === this.epoch && req.jb !== undefined) this.sentJb = req.jb;
      if (epoch === this.epoch && req.ad !== undefined) this.sentAd = req.ad;
      const t3 = r1(this.wireNow());
      if (epoch !== this.epoch || reply.q !== q) return;
      this.stats.syncs += 1;
      this.stats.lastRttMs = r1(t3 - req.t0 - reply.dt);
      this.prev = [q, t3];
      // the agent completes an exchange when a later sync carries its t3
      if (prev) this.agentSynced = true;
    });
    this.flush();
  }

  private async tapIfReady(): Promise<void> {
    if (this.stopped || !this.agent || !this.params || this.tap || this.tapping) return;
    if (this.stats.path === 'none') return;
    const p = this.room.remoteParticipants.get(this.agent);
    const track = p ? audioTrackOf(p) : undefined;
    if (!track) return;
    const epoch = this.epoch;
    this.tapping = true;
    try {
      const tap = await this.deps.tapFactory(
        track,
        {
          path: this.options.path ?? 'auto',
          audioContext: this.options.audioContext,
          workletUrl: this.options.workletUrl,
          webAudioMix: this.webAudioMix(),
          dating: this.options.dating ?? 'auto',
          threshold: this.params.thr,
          gapSeconds: this.params.gap_ms / 1000,
          envelopeBins: this.params.env_bins,
          levelBins: this.params.lv ? LEVEL_RING_MS : 0,
        },
        (t, gap, env) => this.onOnset(tap, t, gap, env),
      );
      if (epoch !== this.epoch || this.stopped) {
        tap.close();
        return;
      }
      this.tap = tap;
      this.tapTrack = track;
    } catch (err) {
      this.error(err);
    } finally {
      this.tapping = false;
    }
  }

  private onOnset(tap: Tap, contextTime: number, gap: number, env?: string): void {
    if (tap !== this.tap) return;
    const t = tap.toClientMs(contextTime) - this.clockOrigin;
    this.stats.dating = tap.dating;
    if (!Number.isFinite(t) || !Number.isFinite(gap)) return;
    const onset: [number, number] = [r1(t), r1(Math.min(gap, 60) * 1000)];
    // an agent that asked for none (an older one) refuses an onset with an envelope
    const bins = this.params?.env_bins ?? 0;
    this.pending.push(env && bins > 0 ? [...onset, env.slice(0, bins)] : onset);
    if (this.pending.length > MAX_PENDING) this.pending.splice(0, this.pending.length - MAX_PENDING);
    this.flush();
  }

  /**
   * Send the onsets whose device time has passed (the worklet sees a sample before the device
   * plays it; the agent refuses future-dated onsets), at most one report per 250 ms.
   */
  private flush(): void {
    if (this.stopped || !this.agentSynced || !this.params || this.reportInFlight) return;
    if (this.pending.length === 0 || this.flushTimer) return;
    const now = this.wireNow();
    const due = this.pending.filter(([t]) => t <= now);
    const wait = Math.max(
      this.lastReportAt + MIN_REPORT_INTERVAL_MS - now,
      due.length ? 0 : Math.min(...this.pending.map(([t]) => t)) - now,
    );
    if (wait > 0) {
      const epoch = this.epoch;
      this.flushTimer = () => undefined;
      this.later(() => {
        if (epoch !== this.epoch) return;
        this.flushTimer = undefined;
        this.flush();
      }, Math.ceil(wait));
      return;
    }
    const batch = due.slice(0, this.params.max_onsets);
    this.pending = this.pending.filter((o) => !batch.includes(o));
    this.reportInFlight = true;
    this.lastReportAt = now;
    const epoch = this.epoch;
    void this.enqueue(async () => {
      if (epoch !== this.epoch) return;
      const req: ReportRequest = { v: PROTOCOL_VERSION, q: ++this.q, o: batch };
      await this.rpc(REPORT, req);
      this.stats.reports += 1;
      this.stats.onsetsSent += batch.length;
    }).finally(() => {
      this.reportInFlight = false;
      if (epoch === this.epoch) this.flush();
    });
  }
}

/**
 * Start the companion: finds the agent's audio track, measures when its audio becomes audible
 * at this device's output, and reports it to the agent (which must call
 * `client_playout.enable(session, room)`). Requires livekit-client >= 2.6.0 (RPC).
 */
export function startPlayoutReporter(
  room: Room,
  options: PlayoutReporterOptions = {},
  deps: Partial<ReporterDeps> = {},
): PlayoutReporter {
  const reporter = new Reporter(room, options, { ...defaultDeps, ...deps });
  reporter.start();
  return reporter;
}
