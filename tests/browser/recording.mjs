// Watermarks and session recording in Chromium (tests/tests/e2e_recording.rs starts the
// services and judges the pixels). A user works in a console desktop of a pool without either,
// then in one that policy watermarks and records; an administrator finds the recording, plays
// it, seeks into its middle and to a later point, and sees the screens the user saw; a chunk
// tampered with on the broker's volume is reported.
//
//   node recording.mjs '{"broker": URL, "chromium": PATH, "artifacts": DIR, "tmp": DIR}'
//
// Protocol on stdout: {"shot": PATH, "phase": NAME, ...} asks the Rust side about a canvas
// image ("ok" or "more"); {"phase": "tamper", "id": ID} asks it to change a chunk on the
// volume; {"done": true} at the end.

import { join } from 'node:path';
import { ask, canvasPng, check, launch, passwordSignIn, sleep, typeAsPerson, untilCanvasShows, viewerOpen } from './lib.mjs';

const cfg = JSON.parse(process.argv[2]);
const log = (msg) => console.error(`recording: ${msg}`);
const shot = (page, name) => page.screenshot({ path: join(cfg.artifacts, name) });

// Opens `pool` from her desktops page and waits for the console's text.
async function connect(page, pool) {
  await page.getByRole('heading', { name: 'My desktops' }).waitFor({ timeout: 15000 });
  await page.getByRole('button', { name: `Connect to ${pool}` }).click();
  await viewerOpen(page);
  await untilCanvasShows(page, cfg.artifacts, 'console', `recording-${pool}-console.png`, 120);
}

// The canvas once it has settled: two shots two seconds apart that the Rust side finds alike
// (the watermark's minute may turn in between: then again). Returns the first shot and the wall
// time in the middle of the two, when the screen was surely the shot's.
async function settled(page, name) {
  for (let i = 0; i < 5; i++) {
    await sleep(2000);
    const first = Date.now();
    const path = await canvasPng(page, cfg.artifacts, name);
    await sleep(2000);
    const again = await canvasPng(page, cfg.artifacts, `again-${name}`);
    if (await ask({ shot: again, phase: 'same', other: path }) === 'ok') return { at: first + 1000, path };
  }
  throw new Error(`the screen never settled (${name})`);
}

async function main() {
  const { page } = await launch(cfg, 'user');
  await passwordSignIn(page, cfg.broker, 'alice', 'alice-pw');
  // Signed in once her desktops show: before that the API rightly answers 401.
  await page.getByRole('heading', { name: 'My desktops' }).waitFor({ timeout: 15000 });
  check(!(await page.getByRole('link', { name: 'Recordings' }).isVisible()), 'a user sees the Recordings link');
  const refused = await page.evaluate(async () => (await fetch('/api/v1/admin/recordings')).status);
  check(refused === 403, `the recordings API answered ${refused} to a user`);

  // Without the policies: no watermark, nothing said about recording.
  await connect(page, 'plain');
  check(await page.locator('#recorded').isHidden(), 'an unrecorded session says it is recorded');
  check(await ask({ shot: await canvasPng(page, cfg.artifacts, 'recording-plain.png'), phase: 'plain' }) === 'ok',
    'the unwatermarked desktop has a watermark');
  await page.getByRole('button', { name: '← My desktops' }).click();

  // With them: the watermark in every pixel she receives, and she is told of the recording.
  await connect(page, 'rec');
  await page.locator('#recorded').waitFor({ timeout: 5000 });
  const title = await page.locator('#recorded').getAttribute('title');
  check(title.includes('what you type'), `the notice does not say keys are recorded: ${title}`);
  check(await ask({ shot: await canvasPng(page, cfg.artifacts, 'recording-watermarked.png'), phase: 'watermarked' }) === 'ok',
    'the watermark is not in the pixels');
  await shot(page, 'recording-01-viewer.png');
  const canvas = page.locator('#screen');
  await canvas.click();
  await typeAsPerson(page, 'clear');
  await page.keyboard.press('Enter');
  const a = await settled(page, 'recording-a.png');
  // Some twenty lines on the cleared screen: nothing scrolls.
  await typeAsPerson(page, 'ls -l /');
  await page.keyboard.press('Enter');
  const b = await settled(page, 'recording-b.png');
  check(await ask({ shot: b.path, phase: 'differ', other: a.path }) === 'ok', 'the two moments look alike: nothing to seek between');
  await sleep(2000);
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByRole('heading', { name: 'Sign in to Atrium' }).waitFor({ timeout: 15000 });
  log(`her two moments: ${a.at} and ${b.at}`);

  // The administrator finds it, plays it, seeks.
  const admin = await launch(cfg, 'admin');
  const ap = admin.page;
  await passwordSignIn(ap, cfg.broker, 'carol', 'carol-pw');
  await ap.getByRole('link', { name: 'Recordings' }).click();
  await ap.getByRole('heading', { name: 'Recordings' }).waitFor();
  await ap.getByLabel('User').fill('alice');
  await ap.getByRole('button', { name: 'Search' }).click();
  const row = ap.locator('tbody tr').filter({ hasText: 'rec' }).first();
  await row.waitFor({ timeout: 30000 });
  // Her sign-out ended the recording; the list shows it complete once the last chunk arrived.
  for (let i = 0; i < 30 && !(await row.textContent()).includes('complete'); i++) {
    await sleep(1000);
    await ap.getByRole('button', { name: 'Search' }).click();
  }
  await shot(ap, 'recording-02-list.png');
  const href = await row.getByRole('link', { name: /^Play/ }).getAttribute('href');
  const id = decodeURIComponent(href.split('/').pop());
  const list = await ap.evaluate(async () => (await fetch('/api/v1/admin/recordings?user=alice')).json());
  const rec = list.find((r) => r.id === id);
  check(rec && rec.pool === 'rec' && rec.input === true, `the listed recording: ${JSON.stringify(rec)}`);
  await row.getByRole('link', { name: /^Play/ }).click();
  const integrity = ap.locator('#recording-integrity');
  await integrity.filter({ hasText: 'Intact' }).waitFor({ timeout: 30000 });
  const screen = ap.locator('#recording-screen');
  const seek = async (t) => {
    const started = Date.now();
    await ap.evaluate((v) => {
      const tl = document.getElementById('recording-timeline');
      tl.value = String(v);
      tl.dispatchEvent(new Event('change'));
    }, t);
    await ap.waitForFunction(() => document.getElementById('recording-screen').dataset.seeked, null, { timeout: 10000 });
    return Date.now() - started;
  };
  // Into the middle: the screen she saw at that moment.
  const atA = a.at - rec.started_at;
  check(atA > 0 && atA < rec.duration_ms, `her first moment (${atA} ms) is not inside the recording (${rec.duration_ms} ms)`);
  const msA = await seek(atA);
  log(`seek to ${atA} ms of ${rec.duration_ms} took ${msA} ms`);
  check(await ask({ shot: await canvasPng(ap, cfg.artifacts, 'recording-seek-a.png', 'recording-screen'), phase: 'same', other: a.path }) === 'ok',
    'the recording at her first moment is not the screen she saw');
  await shot(ap, 'recording-03-player.png');
  const msB = await seek(b.at - rec.started_at);
  log(`seek to ${b.at - rec.started_at} ms took ${msB} ms`);
  check(await ask({ shot: await canvasPng(ap, cfg.artifacts, 'recording-seek-b.png', 'recording-screen'), phase: 'same', other: b.path }) === 'ok',
    'the recording at her second moment is not the screen she saw');
  // Back, then played at 16x: the clock moves and the keys she typed show.
  await seek(atA - 1500);
  await ap.locator('#recording-speed').selectOption('16');
  await ap.getByRole('button', { name: 'Play' }).click();
  await ap.locator('#recording-keys').filter({ hasText: 'ls -l /' }).waitFor({ timeout: 15000 });
  const pos = Number(await screen.getAttribute('data-position'));
  check(pos > atA, `playing did not move on (${pos} ms)`);
  await shot(ap, 'recording-04-playing.png');

  // A chunk changed on the volume: the player says so.
  check(await ask({ phase: 'tamper', id }) === 'ok', 'the chunk could not be changed');
  await ap.reload();
  await integrity.filter({ hasText: 'Tampered with' }).waitFor({ timeout: 30000 });
  log(`after tampering: ${await integrity.textContent()}`);
  await shot(ap, 'recording-05-tampered.png');
  console.log(JSON.stringify({ done: true, seek_ms: [msA, msB] }));
}

main().then(() => process.exit(0), (e) => {
  console.error(`recording: ${e.stack || e}`);
  process.exit(1);
});
