// The container tier's browser test driver: Debian's Chromium (headless, through
// playwright-core) uses Atrium through its one https address (the edge), and keeps working
// when the gateway carrying its desktop is killed. The Rust side
// (tests/tests/containers.rs) starts the tier, judges the canvas and kills the gateway.
//
//   node tier.mjs '{"url": URL, "chromium": PATH, "artifacts": DIR, "tmp": DIR, "word": WORD}'
//
// Protocol on stdout: JSON lines {"phase": NAME, ...}, each answered by one line on stdin.
//   {"phase": "connected"|"reconnected"|"typed", "shot": PATH}
//                                     -> "ok" (the desktop, or the typed word, shows) or "more"
//   {"phase": "kill"}                                    -> "killed" (the gateway was killed)
//   {"phase": "done", "reconnect_ms": N}                 (no answer)
// Failures throw (exit code 1) with a message on stderr.

import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { ask, check, launch, passwordSignIn, sleep, untilCanvasShows as untilShows, viewerConnected, viewerOpen } from './lib.mjs';

const cfg = JSON.parse(process.argv[2]);
const log = (msg) => console.error(`tier: ${msg}`);

const untilCanvasShows = (page, phase, name, tries) => untilShows(page, cfg.artifacts, phase, name, tries);

async function main() {
  // The edge's certificate comes from the tier's own CA, which this browser does not know.
  const { ctx, page } = await launch(cfg, 'tier', { ignoreHTTPSErrors: true });
  await passwordSignIn(page, cfg.url, 'alice', 'alice-pw');
  await page.getByRole('heading', { name: 'My desktops' }).waitFor({ timeout: 15000 });
  await page.screenshot({ path: join(cfg.artifacts, 'tier-01-desktops.png') });
  await page.getByRole('button', { name: 'Connect to console' }).click();
  await viewerOpen(page);
  await untilCanvasShows(page, 'connected', 'tier-02-canvas.png', 120);
  await page.screenshot({ path: join(cfg.artifacts, 'tier-02-viewer.png') });

  // The Rust side kills the gateway that carries this viewer; the page reconnects by itself.
  check((await ask({ phase: 'kill' })) === 'killed', 'the gateway was not killed');
  const killed = performance.now();
  let lost = false;
  for (;;) {
    const connected = await page.evaluate(viewerConnected);
    if (!connected) lost = true;
    if (lost && connected) break;
    check(performance.now() - killed < 30000, 'the viewer did not reconnect within 30 s');
    await sleep(20);
  }
  const reconnectMs = performance.now() - killed;
  log(`reconnected ${Math.round(reconnectMs)} ms after the gateway was killed`);
  await untilCanvasShows(page, 'reconnected', 'tier-03-canvas-reconnected.png', 60);
  await page.screenshot({ path: join(cfg.artifacts, 'tier-03-viewer-reconnected.png') });
  // Keys go through the new relay too.
  await page.locator('#screen').click();
  await page.keyboard.type(`echo ${cfg.word}`, { delay: 30 });
  await page.keyboard.press('Enter');
  await untilCanvasShows(page, 'typed', 'tier-04-canvas-typed.png', 120);
  await page.screenshot({ path: join(cfg.artifacts, 'tier-04-viewer-typed.png') });
  await ctx.close();
  console.log(JSON.stringify({ phase: 'done', reconnect_ms: reconnectMs }));
}

main().then(() => process.exit(0), (e) => {
  log(e.stack || String(e));
  process.exit(1);
});
