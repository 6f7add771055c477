// Pools of an operator's own images, in a real browser: Debian's Chromium (headless, through
// playwright-core). An administrator uploads a disk without Atrium's agent on the Images page,
// sees the node fetch and import it, makes a pool of it on the Pools page and sees there how the
// image runs; a user connects, is told to sign in to the desktop's OS herself and what is
// missing, and sees that OS's own login prompt. Then she connects to a pool of a Debian install
// with the agent as a service (`agentPool`, made by the Rust side through the admin API): she is
// signed in as herself, and what she writes to ~/clipboard.txt reaches the viewer. The Rust
// side (tests/tests/e2e_imported.rs) waits for the pools' spares and judges the canvas.
//
//   node imported.mjs '{"broker": URL, "chromium": PATH, "artifacts": DIR, "tmp": DIR,
//                       "pool": NAME, "disk": FILE, "agentPool": NAME}'
//
// Protocol on stdout: {"pool": NAME} once the pool is made: the Rust side answers "ok" when it
// has a ready desktop. {"shot": PATH, "phase": "login"} asks it to look at the canvas; it
// answers "ok" or "more". {"done": true} at the end. Failures throw (exit code 1).

import { join } from 'node:path';
import {
  ask, check, launch, passwordSignIn, sleep, typeAsPerson, untilCanvasShows, viewerOpen,
} from './lib.mjs';

const cfg = JSON.parse(process.argv[2]);
const log = (msg) => console.error(`imported: ${msg}`);

async function main() {
  // The administrator uploads the disk; the node fetches it, checks it and imports it.
  const admin = await launch(cfg, 'admin');
  const adminPage = admin.page;
  await passwordSignIn(adminPage, cfg.broker, 'carol', 'carol-pw');
  await adminPage.getByRole('heading', { name: 'My desktops' }).waitFor({ timeout: 15000 });
  await adminPage.getByRole('link', { name: 'Images' }).click();
  await adminPage.getByRole('heading', { name: 'Images' }).waitFor();
  // The form's labels hold their fields (a label's name then includes the field's value).
  await adminPage.locator('#i-file').setInputFiles(cfg.disk);
  await adminPage.locator('#i-name').fill(cfg.pool);
  await adminPage.locator('#i-version').fill('1');
  check(await adminPage.locator('#i-firmware').inputValue() === 'uefi', 'the form does not start at UEFI');
  await adminPage.locator('#i-memory').fill('256');
  await adminPage.getByRole('button', { name: 'Upload' }).click();
  const images = adminPage.getByRole('table', { name: 'Images' });
  const imageRow = images.getByRole('row', { name: new RegExp(`${cfg.pool}@1`) });
  await imageRow.waitFor({ timeout: 60000 });
  await imageRow.filter({ hasText: 'node-1: ready' }).waitFor({ timeout: 180000 });
  const listed = await imageRow.textContent();
  check(/UEFI, no agent/.test(listed), `the image's row says ${listed}`);
  await adminPage.screenshot({ path: join(cfg.artifacts, 'imported-00-images.png') });
  log('the node imported the uploaded image');

  // A pool of it, made on the Pools page: booted desktops (firmware images are not cloned).
  await adminPage.getByRole('link', { name: 'Pools' }).click();
  await adminPage.getByRole('heading', { name: 'Pools' }).waitFor();
  await adminPage.getByLabel('Name', { exact: true }).fill(cfg.pool);
  await adminPage.getByLabel('Image', { exact: true }).fill(cfg.pool);
  await adminPage.getByLabel('Display', { exact: true }).fill('1024x768');
  await adminPage.getByLabel('Start desktops as clones', { exact: true }).uncheck();
  await adminPage.getByRole('button', { name: 'Create pool' }).click();
  await adminPage.getByRole('rowheader', { name: cfg.pool }).waitFor({ timeout: 10000 });
  check(await ask({ pool: cfg.pool }) === 'ok', 'the pool has no ready desktop');
  await adminPage.reload();
  const pools = adminPage.getByRole('table', { name: 'Pools' });
  await pools.getByRole('rowheader', { name: cfg.pool }).waitFor({ timeout: 10000 });
  const row = await pools.getByRole('row', { name: new RegExp(cfg.pool) }).textContent();
  check(/imported, UEFI, no agent: users sign in to its OS/.test(row), `the pool's row says ${row}`);
  await adminPage.screenshot({ path: join(cfg.artifacts, 'imported-01-pools.png') });
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
  log('a desktop without an agent showed its own login');

  // A Debian install with the agent: signed in as herself at once, on the OS's own init.
  check(await ask({ pool: cfg.agentPool }) === 'ok', `${cfg.agentPool} has no ready desktop`);
  await page.goto(cfg.broker);
  await page.getByRole('heading', { name: 'My desktops' }).waitFor({ timeout: 15000 });
  await page.getByRole('button', { name: `Connect to ${cfg.agentPool}` }).click();
  await viewerOpen(page);
  check(!(await page.locator('#no-agent').isVisible()), 'the viewer says a desktop with the agent has none');
  // Her shell may not read its terminal yet when the first keys come: typed again until the
  // answer reaches the viewer's "From the desktop" box.
  const want = 'alice@systemd';
  let got = '';
  for (let i = 0; i < 3 && got !== want; i++) {
    await page.locator('#screen').focus();
    await typeAsPerson(page, 'printf %s@%s $(id -un) $(cat /proc/1/comm) > clipboard.txt\n');
    for (let j = 0; j < 40 && got !== want; j++) {
      await sleep(500);
      got = await page.locator('#clip-out').inputValue();
    }
  }
  await page.screenshot({ path: join(cfg.artifacts, 'imported-04-agent.png') });
  check(got === want, `her desktop's clipboard says ${JSON.stringify(got)}, not ${want}`);
  log('a Debian install with the agent signed her in as herself; its clipboard reached the viewer');
  await ctx.close();
  console.log(JSON.stringify({ done: true }));
}

main().then(() => process.exit(0), (e) => {
  log(e.stack || String(e));
  process.exit(1);
});
