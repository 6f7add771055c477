// The browser half of bench-display's `video latency`: Atrium's viewer (viewer-dev.html) on a
// desktop whose screen moves all the time, once with video (WebCodecs VP8) and once without
// (VideoDecoder removed: still images), one after the other. In each, keys are typed at
// intervals; input-to-pixel for a key is the time from its keydown to the drawing of the first
// frame the proxy captured after forwarding it (the frame's input_seq covers the key). Prints
// one JSON line: {"video": {...}, "stills": {...}}, each with the latencies in ms and the
// pictures decoded as video.
//
//   node bench_video_latency.mjs '{"video": URL, "stills": URL, "chromium": PATH, "tmp": DIR, "keys": N}'

import { launch, sleep } from './lib.mjs';

const cfg = JSON.parse(process.argv[2]);

async function measure(name, url, withoutVideo) {
  const { ctx, page } = await launch(cfg, name);
  if (withoutVideo) await page.addInitScript(() => { delete window.VideoDecoder; delete window.EncodedVideoChunk; });
  await page.addInitScript(() => {
    window.__keys = []; // [seq, keydown time]
    window.__lat = [];
    window.__videoPictures = 0;
    window.addEventListener('keydown', () => {
      const t = performance.now();
      // The session numbers the key when it handles this event, after this listener.
      queueMicrotask(() => { if (window.atriumSession) window.__keys.push([window.atriumSession._seq, t]); });
    }, true);
  });
  await page.goto(url);
  await page.waitForFunction(() => document.getElementById('state').textContent.startsWith('connected'), null, { timeout: 30000 });
  await page.evaluate(() => {
    const s = window.atriumSession;
    s.on('frame', ({ inputSeq }) => {
      const now = performance.now();
      while (window.__keys.length && window.__keys[0][0] <= inputSeq) {
        window.__lat.push(now - window.__keys.shift()[1]);
      }
      window.__videoPictures = s.video ? s.video.framesDrawn : 0;
    });
  });
  await page.locator('#screen').click();
  // Let the motion become a stream first.
  await sleep(2000);
  for (let i = 0; i < cfg.keys; i++) {
    await page.keyboard.press('KeyA');
    await sleep(150 + (i % 7) * 10);
  }
  await sleep(1000);
  const r = await page.evaluate(() => ({ latencies: window.__lat, pictures: window.__videoPictures }));
  await ctx.close();
  return r;
}

const video = await measure('video', cfg.video, false);
const stills = await measure('stills', cfg.stills, true);
console.log(JSON.stringify({ video, stills }));
