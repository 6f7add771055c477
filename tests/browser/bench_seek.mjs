// Seek times in the admin portal's recording player (tests/src/bin/bench-display/seek.rs stores
// the recordings and reads the figures). For each recording: open its page, wait for the first
// screen and the integrity check, then seek as an administrator drags the timeline: to the
// middle first (nothing of it loaded yet), then a quarter and three quarters in, then to just
// before the key frame after the middle (the most records to draw after a key frame).
//
//   node bench_seek.mjs '{"broker": URL, "chromium": PATH, "artifacts": DIR, "tmp": DIR,
//                         "recordings": [ID, ...]}'
//
// Prints {"done": true, "seeks": [{"id", "duration_ms", "middle", "worst", "all": [...]}, ...]}.

import { join } from 'node:path';
import { launch, passwordSignIn } from './lib.mjs';

const cfg = JSON.parse(process.argv[2]);
const log = (msg) => console.error(`bench-seek: ${msg}`);

async function main() {
  const { page } = await launch(cfg, 'bench-seek');
  await passwordSignIn(page, cfg.broker, 'carol', 'carol-pw');
  await page.getByRole('heading', { name: 'My desktops' }).waitFor({ timeout: 15000 });
  const seeks = [];
  for (const id of cfg.recordings) {
    const index = await page.evaluate(async (i) => (await fetch(`/api/v1/admin/recordings/${i}`)).json(), id);
    const duration = index.recording.duration_ms;
    await page.goto(`${cfg.broker}/#/admin/recordings/${id}`);
    await page.waitForFunction(() => document.getElementById('recording-screen')?.dataset.seeked === '0', null, { timeout: 60000 });
    // The whole-chain check of a recording of ordinary size runs at open: let it finish first.
    const integrity = page.locator('#recording-integrity');
    if (!(await page.locator('#recording-check').isVisible())) {
      await integrity.filter({ hasText: /Intact|Tampered/ }).waitFor({ timeout: 120000 });
    }
    // Just before the first key frame after the middle.
    const keys = index.chunks.flatMap((c) => c.keys.map(([t]) => t));
    const beforeKey = (keys.find((t) => t > duration / 2) ?? duration) - 100;
    const points = [duration / 2, duration / 4, (3 * duration) / 4, beforeKey].map(Math.round);
    const all = [];
    for (const t of points) {
      const ms = await page.evaluate(async (v) => {
        const canvas = document.getElementById('recording-screen');
        const tl = document.getElementById('recording-timeline');
        const started = performance.now();
        tl.value = String(v);
        tl.dispatchEvent(new Event('change'));
        // The page marks the canvas once the player has drawn the screen at the position.
        while (!canvas.dataset.seeked) {
          await new Promise((r) => requestAnimationFrame(r));
          if (performance.now() - started > 60000) throw new Error(`the seek to ${v} ms never finished`);
        }
        return performance.now() - started;
      }, t);
      all.push({ t, ms: Math.round(ms) });
    }
    await page.screenshot({ path: join(cfg.artifacts, `bench-seek-${seeks.length}.png`) });
    const r = { id, duration_ms: duration, middle: all[0].ms, worst: Math.max(...all.map((a) => a.ms)), all };
    log(JSON.stringify(r));
    seeks.push(r);
  }
  console.log(JSON.stringify({ done: true, seeks }));
}

main().then(() => process.exit(0), (e) => {
  console.error(`bench-seek: ${e.stack || e}`);
  process.exit(1);
});
