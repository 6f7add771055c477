// A pool of an operator's own image without Atrium's agent, in a real browser: Debian's
// Chromium (headless, through playwright-core). The Rust side (tests/tests/e2e_imported.rs)
// imports the disk, makes the pool and judges the canvas. An administrator sees on the Pools page
// how the image runs; a user connects, is told to sign in to the desktop's OS herself and what
// is missing, and sees that OS's own login prompt.
//
//   node imported.mjs '{"broker": URL, "chromium": PATH, "artifacts": DIR, "tmp": DIR,
//                       "pool": NAME}'
//
// Protocol on stdout: {"shot": PATH, "phase": "login"} asks the Rust side to look at the canvas;
// it answers "ok" or "more". {"done": true} at the end. Failures throw (exit code 1).

import { join } from 'node:path';
import { check, launch, passwordSignIn, untilCanvasShows, viewerOpen } from './lib.mjs';

const cfg = JSON.parse(process.argv[2]);
const log = (msg) => console.error(`imported: ${msg}`);

async function main() {
  // The administrator: the pool's image is imported, booted by UEFI, without an agent.
  const admin = await launch(cfg, 'admin');
  await passwordSignIn(admin.page, cfg.broker, 'carol', 'carol-pw');
  await admin.page.getByRole('heading', { name: 'My desktops' }).waitFor({ timeout: 15000 });
  await admin.page.getByRole('link', { name: 'Pools' }).click();
  const pools = admin.page.getByRole('table', { name: 'Pools' });
  await pools.getByRole('rowheader', { name: cfg.pool }).waitFor({ timeout: 10000 });
  const row = await pools.getByRole('row', { name: new RegExp(cfg.pool) }).textContent();
  check(/imported, UEFI, no agent: users sign in to its OS/.test(row), `the pool's row says ${row}`);
  await admin.page.screenshot({ path: join(cfg.artifacts, 'imported-01-pools.png') });
  await admin.ctx.close();
  log('the Pools page says how the image runs');

  // The user: connect, told what this desktop lacks, the OS's own login on screen.
  const { ctx, page } = await launch(cfg, 'user');
  await passwordSignIn(page, cfg.broker, 'alice', 'alice-pw');
  await page.getByRole('heading', { name: 'My desktops' }).waitFor({ timeout: 15000 });
  await page.getByRole('button', { name: `Connect to ${cfg.pool}` }).click();
  await viewerOpen(page);
  const note = page.locator('#no-agent');
  await note.waitFor({ state: 'visible', timeout: 10000 });
  check(/sign in to this desktop yourself/.test(await note.textContent()), 'the viewer does not say to sign in');
  await page.locator('#status').filter({ hasText: 'no Atrium agent' }).waitFor({ timeout: 10000 });
  // The clipboard panel offers nothing to send or take.
  await page.getByRole('button', { name: 'Clipboard', exact: true }).click();
  const send = page.getByRole('button', { name: 'Send to desktop' });
  await send.waitFor({ timeout: 5000 });
  check(await send.isDisabled(), 'the clipboard can be sent to a desktop without an agent');
  await page.getByRole('button', { name: 'Clipboard', exact: true }).click();
  await untilCanvasShows(page, cfg.artifacts, 'login', 'imported-02-login.png', 120,
    'the OS\'s login prompt never showed in the canvas');
  await page.screenshot({ path: join(cfg.artifacts, 'imported-03-viewer.png') });
  await ctx.close();
  console.log(JSON.stringify({ done: true }));
}

main().then(() => process.exit(0), (e) => {
  log(e.stack || String(e));
  process.exit(1);
});
