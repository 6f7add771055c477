// Connection statistics: frames per second and bandwidth over the last second, round-trip
// latency (pings), input-to-frame latency (time from an input event to the first frame the
// server captured after applying it), and video pictures drawn (moving areas sent as VP8).
export class Stats {
  constructor() {
    this.frames = [];
    this.bytes = [];
    this.videoFrames = [];
    this.videoTotal = 0;
    this.rttMs = null;
    this.inputLatencyMs = null;
    this.pendingInputs = new Map(); // seq -> sent time
  }

  frame(now, bytes) {
    this.frames.push(now);
    this.bytes.push([now, bytes]);
  }

  video(now) {
    this.videoFrames.push(now);
    this.videoTotal += 1;
  }

  input(seq, now) {
    this.pendingInputs.set(seq, now);
    if (this.pendingInputs.size > 256) this.pendingInputs.delete(this.pendingInputs.keys().next().value);
  }

  frameForInput(inputSeq, now) {
    let sample = null;
    for (const [seq, t] of this.pendingInputs) {
      if (seq <= inputSeq) {
        if (sample === null) sample = now - t; // the oldest input this frame answers
        this.pendingInputs.delete(seq);
      }
    }
    if (sample !== null) this.inputLatencyMs = this._ewma(this.inputLatencyMs, sample);
  }

  pong(rtt) {
    this.rttMs = this._ewma(this.rttMs, rtt);
  }

  _ewma(old, sample) {
    return old === null ? sample : old * 0.7 + sample * 0.3;
  }

  snapshot(now) {
    const since = now - 1000;
    this.frames = this.frames.filter((t) => t >= since);
    this.bytes = this.bytes.filter(([t]) => t >= since);
    this.videoFrames = this.videoFrames.filter((t) => t >= since);
    return {
      videoFps: this.videoFrames.length,
      videoFrames: this.videoTotal,
      fps: this.frames.length,
      bytesPerSecond: this.bytes.reduce((s, [, b]) => s + b, 0),
      latencyMs: this.rttMs === null ? null : Math.round(this.rttMs),
      inputLatencyMs: this.inputLatencyMs === null ? null : Math.round(this.inputLatencyMs),
    };
  }
}
