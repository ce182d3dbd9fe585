// Browser smoke test of the companion's real tap (own-graph and plugin paths) in a real
// headless browser: Chromium (`npm run build && npm run smoke`; CHROMIUM=/path overrides
// /usr/bin/chromium), under playwright-core, or Firefox (`npm run smoke:firefox`; FIREFOX=/path
// overrides /usr/bin/firefox-esr), under puppeteer-core over WebDriver BiDi (playwright's
// Firefox is a patched build, not Debian's), or WebKitGTK (`npm run smoke:webkit`; WEBKIT=/path
// overrides Debian's MiniBrowser), under WebKitWebDriver on an Xvfb display
// (webkit-webdriver.mjs). Firefox and WebKitGTK need an audio server: without one, Firefox's
// page dies at the first AudioContext and WebKitGTK's never starts, so the script runs a
// private PulseAudio daemon for them unless PULSE_SERVER is set.
// A gated oscillator stands in for the agent's track; a fake Room answers the RPCs. It checks
// that the worklet loads from its Blob URL, that every gate opening is reported once with its
// gap, dated consistently at the output (spread < 2 ms; 5 ms for the fallback dating), and that the element is muted while
// the own graph plays and restored by stop(). The end-to-end accuracy is scripts/heard-e2e's.
import { execFileSync, spawn } from 'node:child_process';
import http from 'node:http';
import { readFileSync, existsSync, mkdtempSync, mkdirSync, writeFileSync, rmSync, openSync, closeSync, constants } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { chromium } from 'playwright-core';
import puppeteer from 'puppeteer-core';
import { launchWebKit, MINIBROWSER } from './webkit-webdriver.mjs';

const browserName = process.argv.includes('--browser')
  ? process.argv[process.argv.indexOf('--browser') + 1]
  : 'chromium';
if (!['chromium', 'firefox', 'webkit'].includes(browserName)) {
  console.error(`--browser ${browserName}: say chromium, firefox or webkit`);
  process.exit(2);
}

async function canRun(cmd) {
  return new Promise((resolve) => {
    const p = spawn(cmd, ['--version'], { stdio: 'ignore' });
    p.on('error', () => resolve(false));
    p.on('exit', (code) => resolve(code === 0));
  });
}

// How far a reported device time may be from the recording's onset. Measured with the output
// timestamp: Chromium 156 within 4.0 ms (early); with the fallback (currentTime + latency)
// Chromium's outputLatency moves by 8 ms now and then: within 9.7 ms. Firefox 153 came out
// early in every mode, by 2-6 ms on a quiet machine and by up to 10.2 ms during a CI run
// (docs/client-playout.md, "Dating a sample at the device"). The rest is margin for a loaded
// machine. Firefox's timestamp without the latency was 36-40 ms early: still caught.
const RECORDING_TOLERANCE_MS = (mode) =>
  browserName === 'firefox' ? 20 : mode.endsWith('latency') || browserName === 'webkit' ? 15 : 10;
// WebKitGTK 2.50 reports outputLatency 0 and a stamp that is not sane (tap.ts), so every mode
// dates with currentTime + baseLatency: early by the audio server's buffering, which the page
// cannot read (72-77 ms here, PulseAudio under GStreamer). The test takes that bias as the
// median of all its reports, bounds it, and holds each report to the tolerance around it:
// what the agent's matching needs is a dating that does not move from response to response.
const WEBKIT_BIAS_MS = [-120, 5];

/**
 * Records the null sink's monitor (48 kHz mono s16) with parec and places it on the clock as
 * e2e/recorder.py does: each read of one whole block arrived no earlier than the block was
 * rendered, so `arrival - samples before it / rate` bounds the recording's start from above;
 * the smallest bound of each window of blocks is that stretch's start. As in `local_starts`
 * there, a window spans at least 2 s and holds at least 50 one-block reads (it grows until it
 * has them), and a short rest joins the last: a window of two or three reads gave a bound
 * late by up to 12 ms, which tilted the line between the anchors.
 */
// Reads parec's output through a FIFO with blocking reads on a thread of its own, each stamped
// as it returns, as e2e/recorder.py does: on the main thread, whose event loop also serves the
// browsers, reads came late and in pieces of any size, and few were one whole block.
const READER = `
const { parentPort, workerData } = require('node:worker_threads');
const fs = require('node:fs');
const fd = fs.openSync(workerData.fifo, 'r');
const chunks = [];
const reads = [];
let total = 0;
for (;;) {
  const buf = Buffer.allocUnsafe(65536);
  const n = fs.readSync(fd, buf, 0, buf.length, null);
  const now = performance.timeOrigin + performance.now();
  if (n <= 0) break;
  chunks.push(buf.subarray(0, n));
  reads.push([now, total / 2, (total + n) / 2]);
  total += n;
}
fs.closeSync(fd);
parentPort.postMessage({ pcm: Buffer.concat(chunks), reads });
`;

function startRecording(env, dir) {
  const RATE = 48000;
  const fifo = join(dir, 'monitor.fifo');
  execFileSync('mkfifo', [fifo]);
  // read-write: opening does not wait for a reader, and the reader's open does not wait
  const wfd = openSync(fifo, constants.O_RDWR);
  const worker = new Worker(READER, { eval: true, workerData: { fifo } });
  const recorded = new Promise((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
  });
  const proc = spawn('parec', ['-d', 'out.monitor', '--raw', '--format=s16le', `--rate=${RATE}`, '--channels=1', '--latency-msec=5'], { env, stdio: ['ignore', wfd, 'ignore'] });
  return {
    async stop() {
      proc.kill();
      await new Promise((r) => (proc.exitCode !== null || proc.signalCode !== null ? r() : proc.once('exit', r)));
      closeSync(wfd); // the last writer: the reader sees the end
      const { pcm: buf, reads } = await recorded;
      const pcm = new Int16Array(buf.buffer, buf.byteOffset, Math.floor(buf.length / 2));
      const sizes = new Map();
      for (const [, a, b] of reads) sizes.set(b - a, (sizes.get(b - a) ?? 0) + 1);
      const block = [...sizes.entries()].sort((x, y) => y[1] - x[1])[0][0];
      const MIN_BLOCKS = 50;
      const blocks = reads
        .filter(([, a, b]) => b - a === block)
        .map(([t, a]) => [a, t - (a / RATE) * 1000])
        .sort((x, y) => x[0] - y[0]);
      const windows = [];
      let cur = [];
      for (const it of blocks) {
        if (cur.length >= MIN_BLOCKS && it[0] - cur[0][0] >= 2 * RATE) {
          windows.push(cur);
          cur = [];
        }
        cur.push(it);
      }
      if (cur.length && windows.length && cur.length < MIN_BLOCKS) windows.at(-1).push(...cur);
      else if (cur.length) windows.push(cur);
      const anchors = windows.map((w) => w.reduce((m, x) => (x[1] < m[1] ? x : m)));
      const timeOf = (n) => {
        if (anchors.length === 1) return anchors[0][1] + (n / RATE) * 1000;
        let i = anchors.findIndex(([m]) => m > n);
        i = Math.min(Math.max(i < 0 ? anchors.length - 1 : i, 1), anchors.length - 1);
        const [n0, s0] = anchors[i - 1];
        const [n1, s1] = anchors[i];
        return s0 + ((s1 - s0) * (n - n0)) / (n1 - n0) + (n / RATE) * 1000;
      };
      // onsets: an audible sample (>= 0.01) after at least 0.2 s without one
      const onsets = [];
      let last = -Infinity;
      for (let n = 0; n < pcm.length; n++) {
        if (Math.abs(pcm[n]) >= 0.01 * 32768) {
          if (n - last >= 0.2 * RATE) onsets.push(timeOf(n));
          last = n;
        }
      }
      return onsets;
    },
  };
}

/** A private PulseAudio daemon with a null sink as its default output; returns its env. */
async function startPulse() {
  const dir = mkdtempSync(join(tmpdir(), 'smoke-pulse-'));
  const socket = join(dir, 'pulse', 'native');
  const conf = join(dir, 'config');
  mkdirSync(conf, { recursive: true });
  writeFileSync(join(conf, 'daemon.conf'), 'default-sample-rate = 48000\nalternate-sample-rate = 48000\n');
  const env = { ...process.env, XDG_RUNTIME_DIR: dir, PULSE_SERVER: `unix:${socket}` };
  const proc = spawn('pulseaudio', ['-n', '--daemonize=no', '--exit-idle-time=-1', '--disallow-exit',
    '--load=module-null-sink sink_name=out rate=48000 channels=1', `--load=module-native-protocol-unix socket=${socket}`,
    '--log-target=stderr', '--log-level=error'], { env: { ...env, PULSE_CONFIG_PATH: conf }, stdio: 'ignore' });
  const failed = new Promise((_, reject) => {
    proc.on('error', (e) => reject(new Error(`pulseaudio: ${e.message} (scripts/setup installs it)`)));
    proc.on('exit', (code) => reject(new Error(`pulseaudio exited (${code})`)));
  });
  for (let i = 0; i < 100 && !existsSync(socket); i++) {
    await Promise.race([new Promise((r) => setTimeout(r, 100)), failed]);
  }
  if (!existsSync(socket)) throw new Error('pulseaudio did not start within 10 s');
  return { env, dir, stop: () => { proc.kill(); rmSync(dir, { recursive: true, force: true }); } };
}

const DIST = fileURLToPath(new URL('../dist', import.meta.url));
const page_html = `<!doctype html><script type="module">
import { startPlayoutReporter } from '/dist/index.js';
class Emitter { constructor(){this.h=new Map();} on(e,f){(this.h.get(e)??this.h.set(e,new Set()).get(e)).add(f);return this;} off(e,f){this.h.get(e)?.delete(f);return this;} emit(e,...a){for(const f of [...(this.h.get(e)??[])])f(...a);} }
const getTs = AudioContext.prototype.getOutputTimestamp;
window.run = async (mode) => {
  // 'latency': a browser without getOutputTimestamp (the fallback dating)
  if (mode === 'latency') delete AudioContext.prototype.getOutputTimestamp;
  // a context's clock starts some time after resume() returns (with PulseAudio, up to a
  // second or more for a page's first): the gates are placed on it once it runs. Once in CI,
  // Firefox's first context never started (the page call timed out after 180 s): a context
  // that has not started in 15 s is replaced, up to three times, and then it says so.
  let src;
  for (let attempt = 1; ; attempt++) {
    src = new AudioContext();
    await src.resume();
    const until = performance.now() + 15000;
    while (src.currentTime < 0.05 && performance.now() < until) await new Promise((r) => setTimeout(r, 20));
    if (src.currentTime >= 0.05) break;
    await src.close();
    if (attempt === 3) throw new Error('the source AudioContext did not start (3 tries of 15 s)');
    console.log('the source AudioContext did not start in 15 s: a new one (try ' + (attempt + 1) + ')');
  }
  const osc = src.createOscillator(); osc.frequency.value = 300;
  const gate = src.createGain(); gate.gain.value = 0;
  const dest = src.createMediaStreamDestination();
  osc.connect(gate).connect(dest); osc.start();
  // the first gate opens 3 s in: the companion's context (made when the tap is) takes a while
  // to start playing into PulseAudio (an opening 0.5 s in was lost before it)
  const t0 = src.currentTime + 3;
  const ons = [];
  for (let k = 0; k < 4; k++) { const on = t0 + k * 0.6; gate.gain.setValueAtTime(0.3, on); gate.gain.setValueAtTime(0, on + 0.3); ons.push(on); }
  const track = new Emitter();
  const el = new Audio(); el.srcObject = dest.stream; el.muted = false; await el.play().catch(()=>{});
  Object.assign(track, { kind: 'audio', mediaStreamTrack: dest.stream.getAudioTracks()[0], attachedElements: [el], getRTCStatsReport: async () => undefined });
  let pluginCtx;
  if (mode === 'plugin') {
    pluginCtx = new AudioContext(); await pluginCtx.resume();
    track.audioContext = pluginCtx; track.webAudioPluginNodes = [];
    el.muted = true; // with webAudioMix the SDK plays the track through its context only
    track.setWebAudioPlugins = (nodes) => { track.webAudioPluginNodes = nodes;
      const s = pluginCtx.createMediaStreamSource(dest.stream); let last = s; for (const n of nodes) { last.connect(n); last = n; } last.connect(pluginCtx.destination); };
  }
  const calls = [];
  const agent = { identity: 'agent', kind: 4, attributes: {}, trackPublications: new Map([['T', { kind: 'audio', track }]]) };
  const room = new Emitter();
  Object.assign(room, { options: { webAudioMix: mode === 'plugin' }, remoteParticipants: new Map([['agent', agent]]),
    localParticipant: { performRpc: async ({ method, payload }) => { const b = JSON.parse(payload); calls.push({ method, b, at: performance.timeOrigin + performance.now() });
      if (method.endsWith('hello')) return JSON.stringify({ v: 1, thr: 0.01, gap_ms: 200, sync_s: 10, max_onsets: 8 });
      if (method.endsWith('sync')) return JSON.stringify({ q: b.q, dt: 0 });
      return ''; } } });
  const errors = [];
  // 'suspended': our context starts suspended (autoplay policy): the element must keep
  // playing until it runs
  let mutedWhileSuspended = null;
  const opts = { onError: (e) => errors.push(String(e)) };
  if (mode === 'forced-latency') opts.dating = 'latency';
  if (mode === 'suspended') {
    opts.audioContext = new AudioContext();
    await opts.audioContext.suspend();
    // as without a user gesture: resume() does nothing
    opts.audioContext.resume = async () => {};
  }
  const reporter = startPlayoutReporter(room, opts);
  if (mode === 'suspended') {
    await new Promise((r) => setTimeout(r, 300));
    mutedWhileSuspended = el.muted;
    delete opts.audioContext.resume; // the user clicked
    await reporter.resume();
  }
  // until a second after the last gate closed, on the source's own clock
  const stall = performance.now() + 30000;
  while (src.currentTime < ons[ons.length - 1] + 1.3) {
    if (performance.now() > stall) throw new Error('the source AudioContext stalled at ' + src.currentTime + ' s');
    await new Promise((r) => setTimeout(r, 50));
  }
  // expected device times of the gate openings: source context time -> performance time
  AudioContext.prototype.getOutputTimestamp = getTs;
  const ts = getTs.call(src);
  // WebKitGTK's stamp runs ahead of now (tap.ts): no source times then, the recording judges
  const sane = ts.performanceTime <= performance.now() + 5;
  const expected = !sane ? null : ons.map((c) => performance.timeOrigin + ts.performanceTime + (c - ts.contextTime) * 1000);
  const reports = calls.filter((c) => c.method.endsWith('report')).flatMap((c) => c.b.o.map((o) => ({ t: o[0] + reporter.clockOrigin, gap: o[1], sentAt: c.at })));
  const out = { stats: { ...reporter.stats }, errors, expected, reports, muted: el.muted, mutedWhileSuspended, baseLatency: src.baseLatency, outputLatency: src.outputLatency };
  reporter.stop();
  out.mutedAfterStop = el.muted;
  return out;
};
</script>`;
const server = http.createServer((req, res) => {
  if (req.url === '/' ) { res.setHeader('content-type', 'text/html'); res.end(page_html); return; }
  const f = DIST + req.url.replace(/^\/dist/, '');
  if (req.url.startsWith('/dist/') && existsSync(f)) { res.setHeader('content-type', 'text/javascript'); res.end(readFileSync(f)); return; }
  res.statusCode = 404; res.end();
}).listen(0);
const port = server.address().port;
// The browser plays into a private PulseAudio null sink whose monitor parec records: the
// truth the companion's device times are checked against (where pulseaudio is installed).
const havePulse = !process.env.PULSE_SERVER && (await canRun('pulseaudio')) && (await canRun('parec'));
if (browserName !== 'chromium' && !havePulse && !process.env.PULSE_SERVER) {
  console.error(`smoke:${browserName} needs pulseaudio and parec (scripts/setup installs them), or PULSE_SERVER`);
  process.exit(1);
}
const pulse = havePulse ? await startPulse() : undefined;
process.once('exit', () => pulse?.stop()); // also when a mode throws
const recording = pulse ? startRecording(pulse.env, pulse.dir) : undefined;
let browser;
if (browserName === 'webkit') {
  browser = await launchWebKit({ binary: process.env.WEBKIT ?? MINIBROWSER, env: pulse?.env ?? process.env });
} else if (browserName === 'firefox') {
  browser = await puppeteer.launch({
    browser: 'firefox',
    executablePath: process.env.FIREFOX ?? '/usr/bin/firefox-esr',
    headless: true,
    env: pulse?.env ?? process.env,
    extraPrefsFirefox: { 'media.autoplay.default': 0, 'media.autoplay.blocking_policy': 0 },
  });
} else {
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium', headless: true, env: pulse?.env ?? process.env, ignoreDefaultArgs: ['--mute-audio'], args: ['--autoplay-policy=no-user-gesture-required'] });
}
const page = await browser.newPage();
console.log('browser:', await browser.version());
page.on('console', (m) => console.log('page:', m.text()));
page.on('pageerror', (e) => console.log('pageerror:', e));
await page.goto(`http://127.0.0.1:${port}/`);
const failures = [];
const allReports = [];
// the browser is closed however the modes end (WebKitGTK's Xvfb and driver are ours to stop)
try {
  for (const mode of ['own-graph', 'plugin', 'latency', 'forced-latency', 'suspended']) {
    const out = await page.evaluate((m) => window.run(m), mode);
    console.log(mode, JSON.stringify(out.stats), 'errors', out.errors, 'muted', out.muted, '->', out.mutedAfterStop);
    const diffs = [];
    for (const [k, r] of out.reports.entries()) {
      if (!out.expected) {
        // no source times (WebKitGTK): the gates open 600 ms apart, the first report anchors
        diffs.push(r.t - out.reports[0].t - k * 600);
        console.log(`  onset gap ${r.gap.toFixed(1)} ms (no sane source stamp); sent ${(r.sentAt - r.t).toFixed(1)} ms after it`);
        continue;
      }
      const e = out.expected.reduce((a, b) => (Math.abs(b - r.t) < Math.abs(a - r.t) ? b : a));
      diffs.push(r.t - e);
      console.log(`  onset gap ${r.gap.toFixed(1)} ms: device - source output ${(r.t - e).toFixed(2)} ms; sent ${(r.sentAt - r.t).toFixed(1)} ms after it`);
    }
    const check = (ok, what) => { if (!ok) failures.push(`${mode}: ${what}`); };
    allReports.push(...out.reports.map((r) => ({ mode, t: r.t })));
    check(out.stats.path === (mode === 'plugin' ? 'plugin' : 'own-graph'), `path ${out.stats.path}`);
    // Firefox's stamp maps the render point; the tap adds the latency to it (tap.ts)
    const stamped = { firefox: 'render-timestamp', chromium: 'output-timestamp', webkit: 'latency' }[browserName];
    const wantDating = mode.endsWith('latency') ? 'latency' : stamped;
    check(out.stats.dating === wantDating, `dating ${out.stats.dating}`);
    if (mode === 'suspended') check(out.mutedWhileSuspended === false, 'element not muted while our context is suspended');
    check(out.errors.length === 0, `errors ${out.errors}`);
    // one report per gate opening, with its gap: the first is the first onset ever (60 s), the
    // others the 300 ms the gate was closed, as the companion's graph played it. That may differ
    // by a few ms (in CI, once, 310 ms: right after a resume the way from the source to the
    // companion's context grew by 10 ms between two openings, and the recording agreed).
    const gaps = out.reports.map((r) => r.gap);
    check(gaps.length === 4 && gaps[0] === 60000 && gaps.slice(1).every((g) => Math.abs(g - 300) <= 15),
      `one report per gate opening, with its gap (got ${JSON.stringify(gaps)})`);
    // the fallback reads currentTime on the main thread, which moves in audio-callback steps
    // without a recording, at least the consistency of the dating: against the source
    // context's own output timestamps (Firefox rounds performance.now() to 1 ms, with jitter)
    // (WebKitGTK: against the gates' schedule, with the fallback dating's currentTime steps)
    const spread = browserName === 'webkit' ? 15 : mode.endsWith('latency') || browserName === 'firefox' ? 5 : 2;
    if (!recording) {
      check(diffs.length > 0 && Math.max(...diffs) - Math.min(...diffs) < spread, `dating spread under ${spread} ms`);
    }
    check(out.reports.every((r) => r.sentAt >= r.t), 'no onset sent before its device time');
    if (mode !== 'plugin') check(out.muted && !out.mutedAfterStop, 'element muted while tapped, restored by stop()');
  }
} finally {
  await browser.close();
}
if (recording) {
  // each reported device time against the onset the recording shows (same detector)
  const truth = await recording.stop();
  const errs = {};
  for (const r of allReports) {
    const near = truth.reduce((a, b) => (Math.abs(b - r.t) < Math.abs(a - r.t) ? b : a), Infinity);
    (errs[r.mode] ??= []).push(r.t - near);
  }
  let bias = 0;
  if (browserName === 'webkit') {
    const all = Object.values(errs).flat().sort((a, b) => a - b);
    bias = all.length ? all[Math.floor(all.length / 2)] : NaN;
    console.log(`webkit: reports are ${bias.toFixed(1)} ms from the recording (median): the audio server's unreported latency`);
    if (!(bias >= WEBKIT_BIAS_MS[0] && bias <= WEBKIT_BIAS_MS[1])) {
      failures.push(`webkit: the median report is ${bias.toFixed(1)} ms from the recording (allowed ${WEBKIT_BIAS_MS.join(' to ')} ms)`);
    }
  }
  for (const [mode, e] of Object.entries(errs)) {
    console.log(`${mode}: reported - recording ${e.map((x) => x.toFixed(1)).join(', ')} ms`);
    const worst = Math.max(...e.map((x) => Math.abs(x - bias)));
    if (!(worst <= RECORDING_TOLERANCE_MS(mode))) {
      const from = bias ? ` the bias (${bias.toFixed(1)} ms) off` : '';
      failures.push(`${mode}: a reported device time is ${worst.toFixed(1)} ms${from} from the recording (limit ${RECORDING_TOLERANCE_MS(mode)} ms)`);
    }
  }
}
pulse?.stop();
server.close();
if (failures.length) {
  console.error('FAILED:\n  ' + failures.join('\n  '));
  process.exit(1);
}
console.log(`ok: the companion taps, dates and reports in ${browserName}`);
