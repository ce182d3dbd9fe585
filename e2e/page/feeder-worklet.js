// Plays the agent's frames, as they arrive, into the sending track: what the agent's
// rtc.AudioSource does when its native queue drains into WebRTC. No prebuffer: a frame
// starts at the next render quantum; silence when nothing is queued.
class Feeder extends AudioWorkletProcessor {
  constructor() {
    super();
    this.chunks = [];
    this.pos = 0;
    this.port.onmessage = (e) => this.chunks.push(e.data);
  }
  process(_inputs, outputs) {
    const out = outputs[0][0];
    let i = 0;
    while (i < out.length && this.chunks.length) {
      const c = this.chunks[0];
      const n = Math.min(out.length - i, c.length - this.pos);
      out.set(c.subarray(this.pos, this.pos + n), i);
      i += n;
      this.pos += n;
      if (this.pos >= c.length) {
        this.chunks.shift();
        this.pos = 0;
      }
    }
    out.fill(0, i);
    for (let ch = 1; ch < outputs[0].length; ch++) outputs[0][ch].set(out);
    return true;
  }
}
registerProcessor('feeder', Feeder);
