// The container tier's browser test driver: Debian's Chromium (headless, through
// playwright-core) uses Atrium through its one https address (the edge), downloads a file of
// its desktop and uploads one, each over its link (through the edge and the gateway that
// relays its viewer), and keeps working when the gateway carrying its desktop is killed. The Rust side
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

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { ask, check, inDesktop, launch, passwordSignIn, sleep, untilCanvasShows as untilShows, viewerConnected, viewerOpen } from './lib.mjs';

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

  // A file of the desktop, downloaded as the panel does: the browser fetches its link on the
  // edge's address, and the edge sends it to the gateway that relays this viewer.
  await inDesktop(page, `mkdir -p Transfer && echo ${cfg.word} > Transfer/tier.txt && echo ok`, (t) => t === 'ok\n');
  await page.getByRole('button', { name: 'Download files' }).click();
  const panel = page.locator('#download-panel');
  await panel.getByText('tier.txt').waitFor({ timeout: 30000 }).catch(async (e) => {
    await page.screenshot({ path: join(cfg.artifacts, 'tier-02-downloads.png') });
    throw new Error(`tier.txt is not in the download list (${await panel.textContent()}): ${e.message}`);
  });
  const saving = page.waitForEvent('download', { timeout: 60000 });
  await page.getByRole('button', { name: 'Download tier.txt' }).click();
  const d = await saving;
  const link = new URL(d.url());
  check(link.origin === new URL(cfg.url).origin && /^\/files\/[^/]+\/[0-9a-f]{32}$/.test(link.pathname),
    `fetched over its link through the edge: ${d.url()}`);
  check(readFileSync(await d.path(), 'utf8') === `${cfg.word}\n`, 'tier.txt came as written');
  log(`downloaded tier.txt over ${link.pathname.split('/').slice(0, 3).join('/')}/…`);

  // And a file uploaded through the Upload button: its PUT takes the same way in.
  const chooser = page.waitForEvent('filechooser');
  await page.getByRole('button', { name: 'Upload files' }).click();
  const body = `${cfg.word} came in\n`;
  await (await chooser).setFiles({ name: 'tier-up.txt', mimeType: 'text/plain', buffer: Buffer.from(body) });
  const upRow = page.locator('.upload-row', { hasText: 'tier-up.txt' });
  await upRow.locator('.upload-status', { hasText: 'Saved as' }).waitFor({ timeout: 60000 });
  check(await upRow.getAttribute('data-via') === 'link', 'the upload went as the PUT of its link');
  await inDesktop(page, 'cat Transfer/tier-up.txt', (t) => t === body);

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
