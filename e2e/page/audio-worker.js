// The page's audio receiver, off the main thread: the agent's frames arrive on their own
// WebSocket here and go straight to the feeder worklet through a MessagePort. The renderer's
// main thread stalls for tens of ms on a shared machine (layout, GC, the companion's RPC);
// a stall there no longer delays the audio, so the lead (LEAD_S) can be small.
//
// Each frame carries the agent-clock time (time.time(), the same system clock as Date.now())
// at which the agent's source starts playing it. It enters the track LEAD_S later, at a
// context frame fixed by one anchor (context time minus wall time), so frames stay
// contiguous. The main thread sends fresh context/wall readings; the anchor is re-taken from
// the latest one at the start of a run of audio only if the two clocks drifted apart.
const LEAD_S = 0.03;
const MAX_DRIFT_S = 0.02;
let feeder = null; // MessagePort to the feeder worklet
let sr = 0;
let reading = null; // [context seconds, wall seconds], the main thread's latest
let anchor = null; // context seconds minus wall seconds
let prevEndWall = -1;
let prevEndFrame = -1;
let ws = null;

function schedule(startWall, s16) {
  const f32 = new Float32Array(s16.length);
  for (let i = 0; i < s16.length; i++) f32[i] = s16[i] / 32768;
  let at;
  if (prevEndFrame >= 0 && Math.abs(startWall - prevEndWall) < 0.001) {
    at = prevEndFrame; // continues the previous frame: no rounding gap
  } else {
    const fresh = reading[0] - reading[1];
    if (anchor === null || Math.abs(fresh - anchor) > MAX_DRIFT_S) {
      if (anchor !== null) ws.send(JSON.stringify({ type: 'reanchor', driftMs: 1000 * (fresh - anchor), at: startWall }));
      anchor = fresh;
    }
    at = Math.round((startWall + LEAD_S + anchor) * sr);
  }
  prevEndWall = startWall + f32.length / sr;
  prevEndFrame = at + f32.length;
  feeder.postMessage({ at, data: f32 }, [f32.buffer]);
  // how early the frame arrived for its time: the lead's margin, for the harness's JSON
  return startWall + LEAD_S - Date.now() / 1000;
}

self.onmessage = (e) => {
  const m = e.data;
  if (m.type === 'init') {
    feeder = m.port;
    sr = m.sampleRate;
    reading = m.reading;
    ws = new WebSocket(m.url);
    ws.binaryType = 'arraybuffer';
    let minMargin = Infinity;
    let reported = 0;
    ws.onopen = () => self.postMessage({ type: 'open', leadS: LEAD_S });
    ws.onerror = () => self.postMessage({ type: 'error' });
    ws.onmessage = (ev) => {
      if (typeof ev.data === 'string') {
        const msg = JSON.parse(ev.data);
        if (msg.type === 'clear' && anchor !== null) {
          feeder.postMessage({ clearFrom: Math.round((msg.at + LEAD_S + anchor) * sr) });
        }
        return;
      }
      const margin = schedule(new DataView(ev.data).getFloat64(0, true), new Int16Array(ev.data, 8));
      minMargin = Math.min(minMargin, margin);
      const now = Date.now();
      if (now - reported > 1000) {
        ws.send(JSON.stringify({ type: 'margin', minMs: 1000 * minMargin }));
        reported = now;
      }
    };
  } else if (m.type === 'reading') {
    reading = m.reading;
  }
};
