// SoundPlayer: plays the desktop's sound (Opus packets, 48 kHz stereo) with the browser's own
// decoder (WebCodecs AudioDecoder) through Web Audio, with a volume.
//
//   const p = SoundPlayer.supported() ? new SoundPlayer() : null;
//   p.push(at, packet);  p.setVolume(0.8);  p.resume();  p.close();
//
// Each decoded packet is scheduled right after the previous one. The first after a silence
// (or after a packet came too late) starts JITTER_S ahead of now, so that packets arriving a
// little late still play on time. When the queue, smoothed over about half a second, runs more
// than MAX_AHEAD_S ahead (or any packet would be more than HARD_MAX_AHEAD_S ahead), a packet is
// skipped rather than played late: the desktop's sound clock and the browser's are not the
// same clock, and a queue that drifts upward is latency that only grows. A burst after a stall
// lifts the smoothed length only for a moment, and plays whole.
import { AUDIO_RATE } from './protocol.js';

const JITTER_S = 0.04;
const MAX_AHEAD_S = 0.08;
const HARD_MAX_AHEAD_S = 0.25;

export class SoundPlayer {
  static supported() {
    return typeof window.AudioDecoder === 'function' && typeof window.AudioContext === 'function';
  }

  constructor() {
    this.ctx = new AudioContext({ sampleRate: AUDIO_RATE, latencyHint: 'interactive' });
    this.gain = this.ctx.createGain();
    this.gain.connect(this.ctx.destination);
    this.next = 0;
    // Packets skipped because too much was queued (see MAX_AHEAD_S), and the queue's smoothed
    // length in seconds.
    this.skipped = 0;
    this.ahead = null;
    this.decoder = new AudioDecoder({
      output: (data) => this._play(data),
      error: (e) => console.error('atrium viewer: sound decoder', e),
    });
    this.decoder.configure({ codec: 'opus', sampleRate: AUDIO_RATE, numberOfChannels: 2 });
  }

  // Starts the output after a user gesture (browsers keep a page silent until one).
  resume() {
    if (this.ctx.state === 'suspended') this.ctx.resume().catch(() => {});
  }

  push(at, packet) {
    // A page the browser keeps silent (no gesture yet) drops sound rather than piling it up
    // to play all at once later.
    if (this.decoder.state !== 'configured' || this.ctx.state !== 'running') return;
    this.decoder.decode(new EncodedAudioChunk({
      type: 'key', timestamp: Math.round((at * 1e6) / AUDIO_RATE), data: packet,
    }));
  }

  setVolume(v) {
    this.gain.gain.value = Number.isFinite(v) ? Math.max(0, Math.min(1, v)) : 1;
  }

  _play(data) {
    if (this.ctx.state !== 'running') {
      data.close();
      return;
    }
    const now = this.ctx.currentTime;
    if (this.next < now) this.next = now + JITTER_S;
    // How far ahead the queue runs, smoothed over about half a second: a burst of packets after
    // a stall raises it for a moment, a clock running ahead raises it for good.
    const ahead = this.next - now;
    this.ahead = this.ahead === null ? ahead : this.ahead * 0.95 + ahead * 0.05;
    if (this.ahead > MAX_AHEAD_S || ahead > HARD_MAX_AHEAD_S) {
      data.close();
      this.skipped += 1;
      this.ahead -= data.duration / 1e6;
      return;
    }
    const frames = data.numberOfFrames;
    const buf = this.ctx.createBuffer(2, frames, data.sampleRate);
    for (let ch = 0; ch < 2; ch++) {
      const plane = Math.min(ch, data.numberOfChannels - 1);
      data.copyTo(buf.getChannelData(ch), { planeIndex: plane, format: 'f32-planar' });
    }
    data.close();
    const src = this.ctx.createBufferSource();
    src.buffer = buf;
    src.connect(this.gain);
    src.start(this.next);
    this.next += buf.duration;
  }

  close() {
    try { this.decoder.close(); } catch (e) { /* already closed */ }
    this.ctx.close().catch(() => {});
  }
}
