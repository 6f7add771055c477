// Session time limits as a user meets them, in Chromium (tests/tests/e2e_time_limits.rs starts
// the services and checks the audit log). Alice connects to a console desktop of a pool whose
// idle time is a minute and whose maximum length is short: the end warning shows at once; the
// idle warning comes half a minute later and "I'm still here" keeps her session; left alone,
// she is disconnected and told why, with a Reconnect button that brings back the same desktop;
// then she closes the tab.
//
//   node limits.mjs '{"broker": URL, "chromium": PATH, "artifacts": DIR, "tmp": DIR}'
//
// Protocol on stdout: {"shot": PATH, "phase": "console"} asks the Rust side whether the
// console shows ("ok" or "more"); {"done": true, ...times (ms since the epoch)} at the end.

import { join } from 'node:path';
import { check, launch, passwordSignIn, sleep, untilCanvasShows, viewerOpen } from './lib.mjs';

const cfg = JSON.parse(process.argv[2]);
const log = (msg) => console.error(`limits: ${msg}`);
const shot = (page, name) => page.screenshot({ path: join(cfg.artifacts, name) });

async function main() {
  const { page } = await launch(cfg, 'user');
  await passwordSignIn(page, cfg.broker, 'alice', 'alice-pw');
  await page.getByRole('heading', { name: 'My desktops' }).waitFor({ timeout: 15000 });
  await page.getByRole('button', { name: 'Connect to brief' }).click();
  await viewerOpen(page);
  const connectedAt = Date.now();
  await untilCanvasShows(page, cfg.artifacts, 'console', 'limits-console.png', 120);

  // The maximum length is near: said at once, with the time left.
  const end = page.locator('#end-warning');
  await end.waitFor({ timeout: 10000 });
  const endText = await end.textContent();
  check(/time limit in [0-2]:\d\d/.test(endText), `the end warning says: ${endText}`);
  log(`end warning: ${endText}`);

  // Half a minute without input: the idle warning, with a countdown and "I'm still here".
  const idle = page.locator('#idle-warning');
  await idle.waitFor({ timeout: 90000 });
  const idleAt = Date.now();
  const idleText = await idle.textContent();
  check(/disconnected in 0:[0-3]\d/.test(idleText), `the idle warning says: ${idleText}`);
  check(idleAt - connectedAt >= 25000, `the idle warning came ${idleAt - connectedAt} ms after connecting`);
  await shot(page, 'limits-01-idle-warning.png');
  await page.getByRole('button', { name: 'I\'m still here' }).click();
  const stillHereAt = Date.now();
  await idle.waitFor({ state: 'hidden', timeout: 5000 });
  log(`idle warning after ${idleAt - connectedAt} ms; still here`);

  // Left alone: disconnected for being idle, told so, and offered to reconnect.
  const told = page.locator('.viewer-overlay p', { hasText: 'You were disconnected after 1 minute without keyboard or mouse input.' });
  await told.waitFor({ timeout: 150000 });
  const endedAt = Date.now();
  check(endedAt - stillHereAt >= 55000,
    `disconnected ${endedAt - stillHereAt} ms after "I'm still here": the click did not count as input`);
  const overlay = await page.locator('.viewer-overlay').textContent();
  check(overlay.includes('Your desktop is kept for you for 10 seconds'), `the overlay says: ${overlay}`);
  check(await idle.isHidden(), 'the idle warning stays after the session ended');
  await shot(page, 'limits-02-disconnected.png');
  log(`disconnected ${endedAt - stillHereAt} ms after the click`);

  // Reconnect: her same desktop (the console's scrollback shows, as she left it).
  await page.getByRole('button', { name: 'Reconnect' }).click();
  await viewerOpen(page);
  await untilCanvasShows(page, cfg.artifacts, 'console', 'limits-reconnected.png', 120);
  await shot(page, 'limits-03-reconnected.png');
  await sleep(1000);
  // She closes the tab.
  const closedAt = Date.now();
  await page.close();
  console.log(JSON.stringify({ done: true, connected_at: connectedAt, still_here_at: stillHereAt, ended_at: endedAt, closed_at: closedAt }));
}

main().then(() => process.exit(0), (e) => {
  console.error(`limits: ${e.stack || e}`);
  process.exit(1);
});
