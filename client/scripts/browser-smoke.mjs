// Browser smoke test of the companion's real tap (own-graph and plugin paths) in headless
// Chromium (`npm run build && npm run smoke`; CHROMIUM=/path overrides /usr/bin/chromium).
// A gated oscillator stands in for the agent's track; a fake Room answers the RPCs. It checks
// that the worklet loads from its Blob URL, that every gate opening is reported once with its
// gap, dated consistently at the output (spread < 2 ms; 5 ms for the fallback dating), and that the element is muted while
// the own graph plays and restored by stop(). The end-to-end accuracy is scripts/heard-e2e's.
import http from 'node:http';
import { readFileSync, existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const DIST = fileURLToPath(new URL('../dist', import.meta.url));
const page_html = `<!doctype html><script type="module">
import { startPlayoutReporter } from '/dist/index.js';
class Emitter { constructor(){this.h=new Map();} on(e,f){(this.h.get(e)??this.h.set(e,new Set()).get(e)).add(f);return this;} off(e,f){this.h.get(e)?.delete(f);return this;} emit(e,...a){for(const f of [...(this.h.get(e)??[])])f(...a);} }
const getTs = AudioContext.prototype.getOutputTimestamp;
window.run = async (mode) => {
  // 'latency': a browser without getOutputTimestamp (the fallback dating)
  if (mode === 'latency') delete AudioContext.prototype.getOutputTimestamp;
  const src = new AudioContext();
  await src.resume();
  const osc = src.createOscillator(); osc.frequency.value = 300;
  const gate = src.createGain(); gate.gain.value = 0;
  const dest = src.createMediaStreamDestination();
  osc.connect(gate).connect(dest); osc.start();
  const t0 = src.currentTime + 0.5;
  const ons = [];
  for (let k = 0; k < 4; k++) { const on = t0 + k * 0.6; gate.gain.setValueAtTime(0.3, on); gate.gain.setValueAtTime(0, on + 0.3); ons.push(on); }
  const track = new Emitter();
  const el = new Audio(); el.srcObject = dest.stream; el.muted = false; await el.play().catch(()=>{});
  Object.assign(track, { kind: 'audio', mediaStreamTrack: dest.stream.getAudioTracks()[0], attachedElements: [el], getRTCStatsReport: async () => undefined });
  let pluginCtx;
  if (mode === 'plugin') {
    pluginCtx = new AudioContext(); await pluginCtx.resume();
    track.audioContext = pluginCtx; track.webAudioPluginNodes = [];
    track.setWebAudioPlugins = (nodes) => { track.webAudioPluginNodes = nodes;
      const s = pluginCtx.createMediaStreamSource(dest.stream); let last = s; for (const n of nodes) { last.connect(n); last = n; } last.connect(pluginCtx.destination); };
  }
  const calls = [];
  const agent = { identity: 'agent', kind: 4, attributes: {}, trackPublications: new Map([['T', { kind: 'audio', track }]]) };
  const room = new Emitter();
  const off = 12345678;
  Object.assign(room, { options: { webAudioMix: mode === 'plugin' }, remoteParticipants: new Map([['agent', agent]]),
    localParticipant: { performRpc: async ({ method, payload }) => { const b = JSON.parse(payload); calls.push({ method, b, at: performance.timeOrigin + performance.now() });
      if (method.endsWith('hello')) return JSON.stringify({ v: 1, thr: 0.01, gap_ms: 200, sync_s: 10, max_onsets: 8 });
      if (method.endsWith('sync')) { const t = performance.timeOrigin + performance.now() + off; return JSON.stringify({ q: b.q, t1: t, t2: t }); }
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
  await new Promise((r) => setTimeout(r, mode === 'suspended' ? 3200 : 3500));
  // expected device times of the gate openings: source context time -> performance time
  const ts = getTs.call(src);
  AudioContext.prototype.getOutputTimestamp = getTs;
  const expected = ons.map((c) => performance.timeOrigin + ts.performanceTime + (c - ts.contextTime) * 1000);
  const reports = calls.filter((c) => c.method.endsWith('report')).flatMap((c) => c.b.o.map((o) => ({ t: o[0], gap: o[1], sentAt: c.at })));
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
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium', headless: true, ignoreDefaultArgs: ['--mute-audio'], args: ['--autoplay-policy=no-user-gesture-required'] });
const page = await browser.newPage();
page.on('console', (m) => console.log('page:', m.text()));
page.on('pageerror', (e) => console.log('pageerror:', e));
await page.goto(`http://127.0.0.1:${port}/`);
const failures = [];
for (const mode of ['own-graph', 'plugin', 'latency', 'forced-latency', 'suspended']) {
  const out = await page.evaluate((m) => window.run(m), mode);
  console.log(mode, JSON.stringify(out.stats), 'errors', out.errors, 'muted', out.muted, '->', out.mutedAfterStop);
  const diffs = [];
  for (const r of out.reports) {
    const e = out.expected.reduce((a, b) => (Math.abs(b - r.t) < Math.abs(a - r.t) ? b : a));
    diffs.push(r.t - e);
    console.log(`  onset gap ${r.gap.toFixed(1)} ms: device - source output ${(r.t - e).toFixed(2)} ms; sent ${(r.sentAt - r.t).toFixed(1)} ms after it`);
  }
  const check = (ok, what) => { if (!ok) failures.push(`${mode}: ${what}`); };
  check(out.stats.path === (mode === 'plugin' ? 'plugin' : 'own-graph'), `path ${out.stats.path}`);
  const wantDating = mode.endsWith('latency') ? 'latency' : 'output-timestamp';
  check(out.stats.dating === wantDating, `dating ${out.stats.dating}`);
  if (mode === 'suspended') check(out.mutedWhileSuspended === false, 'element not muted while our context is suspended');
  check(out.errors.length === 0, `errors ${out.errors}`);
  check(JSON.stringify(out.reports.map((r) => r.gap)) === JSON.stringify([60000, 300, 300, 300]), 'one report per gate opening, with its gap');
  // the fallback reads currentTime on the main thread, which moves in audio-callback steps
  const spread = mode.endsWith('latency') ? 5 : 2;
  check(diffs.length > 0 && Math.max(...diffs) - Math.min(...diffs) < spread, `dating spread under ${spread} ms`);
  check(out.reports.every((r) => r.sentAt >= r.t), 'no onset sent before its device time');
  if (mode !== 'plugin') check(out.muted && !out.mutedAfterStop, 'element muted while tapped, restored by stop()');
}
await browser.close();
server.close();
if (failures.length) {
  console.error('FAILED:\n  ' + failures.join('\n  '));
  process.exit(1);
}
console.log('ok: the companion taps, dates and reports in Chromium');
