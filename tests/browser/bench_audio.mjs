// The browser half of the audio-latency benchmark (bench-display's `audio`): Atrium's viewer
// (web-client/viewer-dev.html?audio=1) plays a desktop that sounds a tone at intervals; the page
// listens to its own output and notes, in wall-clock milliseconds, when each tone begins (the
// first 128-sample block of the analyser above the threshold after silence), plus the output's
// own latency as the browser reports it. Prints one JSON line: {"onsets": [...], "outputLatencyMs": N}.
//
//   node bench_audio.mjs '{"url": URL, "chromium": PATH, "tmp": DIR, "seconds": N}'

import { launch, sleep } from './lib.mjs';

const cfg = JSON.parse(process.argv[2]);

const { ctx, page } = await launch(cfg, 'audio');
await page.addInitScript(() => {
  const connect = AudioNode.prototype.connect;
  window.atriumOnsets = [];
  AudioNode.prototype.connect = function tapped(dest, ...rest) {
    if (dest instanceof AudioDestinationNode && !dest.context.atriumTap) {
      const ac = dest.context;
      const tap = ac.createAnalyser();
      tap.fftSize = 256;
      ac.atriumTap = tap;
      connect.call(this, tap);
      const buf = new Float32Array(tap.fftSize);
      let loud = false;
      let quietSince = 0;
      // Polled often: the newest 256 samples (5 ms) of what the page plays.
      setInterval(() => {
        tap.getFloatTimeDomainData(buf);
        let peak = 0;
        for (const v of buf) peak = Math.max(peak, Math.abs(v));
        const now = performance.timeOrigin + performance.now();
        if (!loud && peak > 0.05) {
          loud = true;
          window.atriumOnsets.push(now);
        } else if (loud && peak < 0.01) {
          if (!quietSince) quietSince = now;
          if (now - quietSince > 100) { loud = false; quietSince = 0; }
        } else {
          quietSince = 0;
        }
      }, 1);
      window.atriumOutputLatencyMs = () => ((ac.outputLatency || 0) + (ac.baseLatency || 0)) * 1000;
    }
    return connect.call(this, dest, ...rest);
  };
});
await page.goto(cfg.url);
await page.waitForFunction(() => document.getElementById('state').textContent.startsWith('connected'), null, { timeout: 30000 });
await page.locator('#screen').click();
// How far ahead of the output the player schedules, sampled while the tones play.
const ahead = [];
for (let i = 0; i < cfg.seconds * 10; i++) {
  await sleep(100);
  ahead.push(await page.evaluate(() => (window.atriumSound ? (window.atriumSound.next - window.atriumSound.ctx.currentTime) * 1000 : null)));
}
const result = await page.evaluate(() => ({
  onsets: window.atriumOnsets,
  outputLatencyMs: window.atriumOutputLatencyMs ? window.atriumOutputLatencyMs() : null,
}));
result.scheduledAheadMs = ahead.filter((v) => v !== null);
console.log(JSON.stringify(result));
await ctx.close();
