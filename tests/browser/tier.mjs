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

import { mkdtempSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const cfg = JSON.parse(process.argv[2]);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (msg) => console.error(`tier: ${msg}`);
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run'];

const answers = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function say(msg) {
  console.log(JSON.stringify(msg));
  if (msg.phase === 'done') return '';
  const { value } = await answers.next();
  return (value || '').trim();
}

function check(cond, msg) {
  if (!cond) throw new Error(msg);
}

async function canvasPng(page, name) {
  const url = await page.evaluate(() => document.getElementById('screen').toDataURL('image/png'));
  const path = join(cfg.artifacts, name);
  writeFileSync(path, Buffer.from(url.split(',')[1], 'base64'));
  return path;
}

const viewerConnected = () => {
  const c = document.getElementById('screen');
  const o = document.querySelector('.viewer-overlay');
  return Boolean(c && c.width > 1 && o && o.hidden);
};

async function untilCanvasShows(page, phase, name, tries) {
  for (let i = 0; ; i++) {
    await sleep(500);
    if ((await say({ phase, shot: await canvasPng(page, name) })) === 'ok') return;
    check(i < tries, `the desktop never showed in the canvas (${phase})`);
  }
}

async function main() {
  const dir = mkdtempSync(join(cfg.tmp, 'chromium-'));
  // The edge's certificate comes from the tier's own CA, which this browser does not know.
  const ctx = await chromium.launchPersistentContext(dir, {
    executablePath: cfg.chromium, headless: true, args: ARGS, ignoreHTTPSErrors: true,
    viewport: { width: 1400, height: 900 },
  });
  const page = ctx.pages()[0] || await ctx.newPage();
  page.on('pageerror', (e) => log(`page error: ${e.message}`));

  await page.goto(cfg.url);
  await page.getByRole('heading', { name: 'Sign in to Atrium' }).waitFor({ timeout: 30000 });
  await page.getByLabel('Username').fill('alice');
  await page.getByLabel('Password').fill('alice-pw');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'My desktops' }).waitFor({ timeout: 15000 });
  await page.screenshot({ path: join(cfg.artifacts, 'tier-01-desktops.png') });
  await page.getByRole('button', { name: 'Connect to console' }).click();
  await page.waitForFunction(viewerConnected, null, { timeout: 120000 });
  await untilCanvasShows(page, 'connected', 'tier-02-canvas.png', 120);
  await page.screenshot({ path: join(cfg.artifacts, 'tier-02-viewer.png') });

  // The Rust side kills the gateway that carries this viewer; the page reconnects by itself.
  check((await say({ phase: 'kill' })) === 'killed', 'the gateway was not killed');
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
  await say({ phase: 'done', reconnect_ms: reconnectMs });
}

main().then(() => process.exit(0), (e) => {
  log(e.stack || String(e));
  process.exit(1);
});
