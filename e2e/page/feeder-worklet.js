// Plays the agent's frames into the sending track at the context frame the page scheduled
// them for: what the agent's rtc.AudioSource does when its native queue drains into WebRTC,
// with a constant lead (harness.js) so that a late main thread does not move the audio.
// Silence where nothing is scheduled; a chunk that arrives after its time plays its
// remaining part only (counted as late).
class Feeder extends AudioWorkletProcessor {
  constructor() {
    super();
    this.chunks = []; // {at: context frame of its first sample, data: Float32Array}, in order
    this.lateSamples = 0;
    this.nextReport = 0;
    this.port.onmessage = (e) => {
      const m = e.data;
      if (m.clearFrom !== undefined) {
        this.chunks = this.chunks.filter((c) => c.at < m.clearFrom);
        for (const c of this.chunks) {
          if (c.at + c.data.length > m.clearFrom) c.data = c.data.subarray(0, m.clearFrom - c.at);
        }
        return;
      }
      this.chunks.push(m);
    };
  }
  process(_inputs, outputs) {
    const out = outputs[0][0];
    const start = currentFrame;
    const end = start + out.length;
    out.fill(0);
    while (this.chunks.length && this.chunks[0].at + this.chunks[0].data.length <= start) {
      this.lateSamples += this.chunks[0].data.length;
      this.chunks.shift();
    }
    for (const c of this.chunks) {
      if (c.at >= end) break;
      const from = Math.max(start, c.at);
      const to = Math.min(end, c.at + c.data.length);
      out.set(c.data.subarray(from - c.at, to - c.at), from - start);
    }
    while (this.chunks.length && this.chunks[0].at + this.chunks[0].data.length <= end) {
      this.chunks.shift();
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
