// Plays the agent's frames into the sending track at the context frame the page scheduled
// them for: what the agent's rtc.AudioSource does when its native queue drains into WebRTC,
// with a constant lead (audio-worker.js) so that a late frame does not move the audio.
// Silence where nothing is scheduled; a chunk that arrives after its time plays its
// remaining part only (counted as late). process() allocates nothing: a garbage collection
// on this realtime thread would be a glitch in the very audio being measured.
class Feeder extends AudioWorkletProcessor {
  constructor() {
    super();
    this.chunks = []; // {at: context frame of its first sample, data: Float32Array}, in order
    this.head = 0; // chunks before this index are done
    this.lateSamples = 0;
    this.nextReport = 0;
    const onMessage = (e) => {
      const m = e.data;
      if (m.port !== undefined) {
        m.port.onmessage = onMessage; // the audio worker's frames come straight from it
        return;
      }
      if (m.clearFrom !== undefined) {
        this.chunks = this.chunks.slice(this.head).filter((c) => c.at < m.clearFrom);
        this.head = 0;
        for (const c of this.chunks) {
          if (c.at + c.data.length > m.clearFrom) c.data = c.data.subarray(0, m.clearFrom - c.at);
        }
        return;
      }
      if (this.head > 64) {
        this.chunks = this.chunks.slice(this.head); // compact now and then, off the hot path
        this.head = 0;
      }
      this.chunks.push(m);
    };
    this.port.onmessage = onMessage;
  }
  process(_inputs, outputs) {
    const out = outputs[0][0];
    const n = out.length;
    const start = currentFrame;
    const end = start + n;
    out.fill(0);
    const chunks = this.chunks;
    while (this.head < chunks.length && chunks[this.head].at + chunks[this.head].data.length <= start) {
      this.lateSamples += chunks[this.head].data.length;
      this.head++;
    }
    for (let k = this.head; k < chunks.length; k++) {
      const c = chunks[k];
      if (c.at >= end) break;
      const from = Math.max(start, c.at);
      const to = Math.min(end, c.at + c.data.length);
      const d = c.data;
      for (let i = from; i < to; i++) out[i - start] = d[i - c.at];
    }
    while (this.head < chunks.length && chunks[this.head].at + chunks[this.head].data.length <= end) {
      this.head++;
    }
    for (let ch = 1; ch < outputs[0].length; ch++) outputs[0][ch].set(out);
    if (currentTime >= this.nextReport) {
      this.port.postMessage({ lateMs: (1000 * this.lateSamples) / sampleRate });
      this.nextReport = currentTime + 1;
    }
    return true;
  }
}
registerProcessor('feeder', Feeder);
