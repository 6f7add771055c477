// The end-to-end browser test's driver: Debian's Chromium (headless, through playwright-core)
// uses Atrium as people do. The Rust side (tests/tests/e2e_browser.rs) starts the services,
// runs this script, and checks the screenshots it reports; pixels are judged there.
//
//   node e2e.mjs '{"broker": URL, "chromium": PATH, "artifacts": DIR, "tmp": DIR, "word": WORD}'
//
// Protocol on stdout: JSON lines. {"shot": PATH, "phase": NAME} asks the Rust side to look at a
// canvas image; it answers on stdin with "ok" (go on) or "more" (take another). Phase
// `kill_services` (no shot) asks it to kill the node agent and the display proxy and start them
// again, as the quick start does; it answers "ok" once they run. {"done": true} at the end.
// Failures throw (exit code 1) with a message on stderr.

import { join } from 'node:path';
import { ask, check, launch, loudest, passwordSignIn, sleep, tapSound, typeAsPerson, untilCanvasShows as untilShows, viewerOpen } from './lib.mjs';

const cfg = JSON.parse(process.argv[2]);
const log = (msg) => console.error(`e2e: ${msg}`);
const browser = (name) => launch(cfg, name);

async function shot(page, name) {
  await page.screenshot({ path: join(cfg.artifacts, name) });
}

const signIn = (page, user, password) => passwordSignIn(page, cfg.broker, user, password);

const untilCanvasShows = (page, phase, name, tries, failure) =>
  untilShows(page, cfg.artifacts, phase, name, tries, failure);

async function main() {
  // --- A user: sign in (wrong, then right), see the pool, connect, work, sign out.
  const { ctx, page } = await browser('user');
  await tapSound(ctx);
  await signIn(page, 'alice', 'not-her-password');
  const err = page.locator('#signin-error');
  await err.filter({ hasText: 'incorrect' }).waitFor({ timeout: 10000 });
  await shot(page, 'e2e-01-signin-error.png');
  await page.getByLabel('Password').fill('alice-pw');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'My desktops' }).waitFor({ timeout: 15000 });
  await page.getByRole('heading', { name: 'console', exact: true }).waitFor();
  await page.getByRole('heading', { name: 'desktop', exact: true }).waitFor();
  await shot(page, 'e2e-02-desktops.png');
  check(!(await page.getByText('null').isVisible().catch(() => false)), 'stray text on the desktops page');
  // Phone width: everything still fits, nothing scrolls sideways.
  await page.setViewportSize({ width: 390, height: 844 });
  const overflow = await page.evaluate(() => document.scrollingElement.scrollWidth - window.innerWidth);
  check(overflow <= 0, `the desktops page scrolls sideways by ${overflow}px at phone width`);
  await shot(page, 'e2e-02-desktops-phone.png');
  await page.setViewportSize({ width: 1400, height: 900 });
  // Keyboard only: Tab reaches the Connect button.
  let reached = false;
  for (let i = 0; i < 12 && !reached; i++) {
    await page.keyboard.press('Tab');
    reached = await page.evaluate(() => document.activeElement && document.activeElement.getAttribute('aria-label') === 'Connect to console');
  }
  check(reached, 'the Connect button cannot be reached with the keyboard');
  // No admin pages for her, and the admin API refuses her.
  check(!(await page.getByRole('link', { name: 'Pools' }).isVisible()), 'a non-administrator sees the Pools link');
  const status = await page.evaluate(async () => (await fetch('/api/v1/admin/pools')).status);
  check(status === 403, `the admin API answered ${status} to a non-administrator`);

  await page.getByRole('button', { name: 'Connect to console' }).click();
  const canvas = page.locator('#screen');
  await viewerOpen(page);
  await untilCanvasShows(page, 'connected', 'e2e-03-canvas-connected.png', 120, 'the desktop never showed in the canvas');
  await shot(page, 'e2e-03-viewer.png');

  await canvas.click();
  await page.keyboard.type(`echo ${cfg.word}`, { delay: 30 });
  await page.keyboard.press('Enter');
  await untilCanvasShows(page, 'typed', 'e2e-04-canvas-typed.png', 120, 'the command output never showed in the canvas');
  await shot(page, 'e2e-04-viewer-typed.png');

  // The node agent and the display proxy die (kill -9). The quick start starts them again; the
  // node takes the running desktop back, and the viewer comes back by itself to the same desktop
  // (the word is still on its screen) within a few seconds.
  check(await ask({ shot: '', phase: 'kill_services' }) === 'ok', 'the test could not kill the node and the display proxy');
  await page.waitForFunction(() => !document.querySelector('.viewer-overlay').hidden, null, { timeout: 15000 });
  const lost = Date.now();
  log(`viewer: ${await page.locator('.viewer-overlay').textContent()}`);
  await shot(page, 'e2e-04-viewer-reconnecting.png');
  await page.waitForFunction(() => document.querySelector('.viewer-overlay').hidden, null, { timeout: 20000 });
  log(`viewer back after ${Date.now() - lost} ms`);
  await untilCanvasShows(page, 'typed', 'e2e-04-canvas-reconnected.png', 60, 'after the node and the display proxy came back the viewer did not show the same desktop');

  // The graphical desktop: she is signed in there as herself, no second password.
  await page.getByRole('button', { name: '← My desktops' }).click();
  await page.getByRole('heading', { name: 'My desktops' }).waitFor({ timeout: 15000 });
  await page.getByRole('button', { name: 'Connect to desktop' }).click();
  await viewerOpen(page);
  await untilCanvasShows(page, 'desktop', 'e2e-05-canvas-desktop.png', 240, 'the graphical desktop never showed her session');
  await shot(page, 'e2e-05-viewer-desktop.png');

  // The desktop takes the window's size and follows it. The pool's 1280x800 is the largest it
  // takes: in this 1400x900 window it has that; in a smaller window it shrinks to the window.
  check(await page.locator('#desktop-size').inputValue() === 'window', 'the desktop does not follow the window by default');
  const canvasSize = () => page.evaluate(() => [document.getElementById('screen').width, document.getElementById('screen').height]);
  await page.waitForFunction(() => document.getElementById('screen').width === 1280 && document.getElementById('screen').height === 800, null, { timeout: 15000 });

  // Sound: a 1 kHz tone played in the desktop is heard in the browser (the loudest frequency of
  // what the page plays), and muting silences it.
  check(await page.locator('#sound').isVisible(), 'no sound control on a desktop with sound');
  check(await page.locator('#sound').getAttribute('aria-pressed') === 'true', 'the sound starts muted');
  // The session's terminal may open after its panel (a loaded host): typing waits for it.
  await untilCanvasShows(page, 'terminal', 'e2e-05-canvas-terminal.png', 120, 'no terminal opened in the desktop to play a tone from');
  await canvas.click();
  await typeAsPerson(page, 'speaker-test -t sine -f 1000 -c 2 -l 20 >/dev/null 2>&1');
  const typedAt = Date.now();
  await page.keyboard.press('Enter');
  let tone = null;
  for (let i = 0; i < 240 && !tone; i++) {
    const l = await page.evaluate(loudest);
    if (Math.abs(l.hz - 1000) < 30 && l.db > -50) tone = l;
    else await sleep(250);
  }
  check(tone, `the desktop's tone was never heard (loudest now: ${JSON.stringify(await page.evaluate(loudest))})`);
  log(`heard the desktop's tone ${Date.now() - typedAt} ms after Enter: ${tone.hz.toFixed(0)} Hz at ${tone.db.toFixed(0)} dB`);
  await page.locator('#sound').click();
  check(await page.locator('#sound').getAttribute('aria-pressed') === 'false', 'the sound button did not mute');
  await page.waitForFunction(() => {
    const l = (window.atriumTestTaps || []).map((a) => { const b = new Float32Array(a.frequencyBinCount); a.getFloatFrequencyData(b); return Math.max(...b); });
    return l.every((db) => db < -90);
  }, null, { timeout: 5000 }).catch(() => { throw new Error('muted, the desktop is still heard'); });
  await page.locator('#sound').click();
  await canvas.click();
  // Ctrl with the c key, as a keyboard sends it ('Control+C' would be the keysym of a capital
  // without Shift, on which QEMU turns Caps Lock on in the guest to match).
  await page.keyboard.press('Control+c');

  // A video with sound: she plays one in the desktop (a minute of GStreamer's moving zone plate
  // in a window, with a 600 Hz tone beside it; she stops both before their end). The picture
  // reaches this page as VP8, decoded by WebCodecs (the page counts the pictures), and the tone
  // is heard. A second viewer of the same desktop in a browser without WebCodecs sees the same
  // motion as still images. (The sound is its own program: gst-launch with an ALSA sink hung
  // in the guest while stopping its pipeline, on Ctrl+C or at the stream's end, on a loaded
  // host.)
  const stills = await ctx.newPage();
  await stills.addInitScript(() => { delete window.VideoDecoder; delete window.EncodedVideoChunk; });
  await stills.goto(page.url());
  await viewerOpen(stills);
  const pictures = (p) => p.evaluate(() => Number(document.getElementById('screen').dataset.videoFrames || 0));
  await page.bringToFront();
  await canvas.click();
  // The page's count is updated once a second.
  await sleep(1500);
  const before = await pictures(page);
  // Typing is not motion: the command goes as lossless stills.
  await typeAsPerson(page, 'speaker-test -t sine -f 600 -c 2 -l 12 >/dev/null 2>&1 & gst-launch-1.0 -q videotestsrc pattern=zone-plate kx2=6 ky2=6 kt=3 num-buffers=1500 ! video/x-raw,width=320,height=240,framerate=25/1 ! ximagesink', 20);
  await sleep(1500);
  const typed = await pictures(page);
  check(typed === before, `typing a command was sent as video (${typed - before} pictures)`);
  await page.keyboard.press('Enter');
  const motionAt = Date.now();
  // Both are watched together: on a loaded host the first pictures can come late, and the
  // tone is heard whenever it plays.
  let videoAt = null;
  let videoTone = null;
  for (let i = 0; i < 600 && !(videoAt && videoTone); i++) {
    if (!videoAt && (await pictures(page)) >= before + 10) videoAt = Date.now();
    if (!videoTone) {
      const l = await page.evaluate(loudest);
      if (Math.abs(l.hz - 600) < 30 && l.db > -50) videoTone = l;
    }
    if (!(videoAt && videoTone)) await sleep(250);
  }
  if (!videoAt) {
    await shot(page, 'e2e-05-viewer-no-video.png');
    const stats = await page.locator('.viewer-stats').textContent().catch(() => '');
    check(false, `the motion was not decoded as video: ${(await pictures(page)) - before} pictures (viewer: ${stats}; the tone was ${videoTone ? '' : 'not '}heard)`);
  }
  log(`the video reached the page as video: 10 pictures decoded ${videoAt - motionAt} ms after Enter (counted once a second)`);
  check(videoTone, `the video's sound was never heard (loudest now: ${JSON.stringify(await page.evaluate(loudest))})`);
  log(`the video's sound is heard: ${videoTone.hz.toFixed(0)} Hz at ${videoTone.db.toFixed(0)} dB`);
  await shot(page, 'e2e-05-viewer-video.png');
  let fallback = null;
  for (let i = 0; i < 40 && !fallback; i++) {
    const text = (await stills.locator('.viewer-stats').textContent()) || '';
    const fps = Number((text.match(/(\d+) fps/) || [])[1] || 0);
    if (fps >= 2) fallback = { text, pictures: await pictures(stills) };
    else await sleep(500);
  }
  check(fallback, 'the viewer without WebCodecs did not see the motion');
  check(fallback.pictures === 0 && !fallback.text.includes('video'), `the viewer without WebCodecs was sent video: ${JSON.stringify(fallback)}`);
  log(`without WebCodecs the motion came as still images (${fallback.text})`);
  await shot(stills, 'e2e-05-viewer-stills.png');
  await stills.close();
  await page.bringToFront();
  // The video's window took the focus: Ctrl+C goes to the terminal, clicked right of the video.
  const box = await canvas.boundingBox();
  // The window manager gives the focus a moment after the click (keys typed before it went to
  // the video), so she waits until the terminal's button in the task list shows the focus.
  await canvas.click({ position: { x: box.width * 0.55, y: box.height * 0.5 } });
  await untilCanvasShows(page, 'terminal-focused', 'e2e-05-canvas-focused.png', 40, 'the terminal never took the focus');
  await page.keyboard.press('Control+c');
  await sleep(1000);
  await typeAsPerson(page, 'kill %1', 20);
  await page.keyboard.press('Enter');
  await untilCanvasShows(page, 'one-window', 'e2e-05-canvas-stopped.png', 40, 'the video\'s window stayed open after Ctrl+C');
  await page.setViewportSize({ width: 1000, height: 700 });
  const resizedAt = Date.now();
  const want = await page.evaluate(() => {
    const s = document.querySelector('.viewer-screen');
    return [Math.floor(s.clientWidth / 8) * 8, s.clientHeight];
  });
  await page.waitForFunction(([w, h]) => document.getElementById('screen').width === w && document.getElementById('screen').height === h,
    want, { timeout: 15000 }).catch(async () => { throw new Error(`the desktop stayed ${await canvasSize()} in a window that holds ${want}`); });
  log(`the desktop followed the window to ${want.join('x')} in ${Date.now() - resizedAt} ms`);
  await untilCanvasShows(page, 'resized', 'e2e-05-canvas-resized.png', 60, 'the resized desktop did not show her panel');
  check(await ask({ shot: '', phase: 'screen', width: want[0], height: want[1] }) === 'ok', `the guest's screen is not ${want.join('x')}`);
  await shot(page, 'e2e-05-viewer-resized.png');

  // A size of her choice instead, kept for her next visit.
  await page.locator('#desktop-size').selectOption('1024x768');
  await page.waitForFunction(() => document.getElementById('screen').width === 1024 && document.getElementById('screen').height === 768, null, { timeout: 15000 });
  check(await ask({ shot: '', phase: 'screen', width: 1024, height: 768 }) === 'ok', 'the guest\'s screen is not 1024x768');
  check(await page.evaluate(() => localStorage.getItem('atrium.desktopSize')) === '1024x768', 'the chosen size is not remembered');
  await page.setViewportSize({ width: 1400, height: 900 });
  await page.locator('#desktop-size').selectOption('window');
  await page.waitForFunction(() => document.getElementById('screen').width === 1280 && document.getElementById('screen').height === 800, null, { timeout: 15000 });

  // The clipboard, desktop to computer: a program in the desktop copies while she neither
  // pressed a copy shortcut nor clicked for a while. The viewer shows the text but leaves this
  // computer's clipboard alone; Copy to my clipboard takes it there. (Last in her desktop: the
  // Clipboard panel takes room from the desktop, which follows, and the redraw is motion.)
  await ctx.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: new URL(cfg.broker).origin });
  await page.evaluate(() => navigator.clipboard.writeText('before'));
  await sleep(5500);
  const copied = `copied-${cfg.word}`;
  await typeAsPerson(page, `echo -n ${copied} | xclip -selection clipboard`, 20);
  await page.keyboard.press('Enter');
  await page.waitForFunction((w) => document.getElementById('clip-out').value === w, copied, { timeout: 60000 })
    .catch(async (e) => {
      await shot(page, 'e2e-05-viewer-no-clipboard.png');
      throw new Error(`the desktop's copy never reached the viewer (it shows ${JSON.stringify(await page.locator('#clip-out').inputValue())}): ${e.message}`);
    });
  const local = await page.evaluate(() => navigator.clipboard.readText());
  check(local === 'before', `a copy the user did not ask for reached this computer's clipboard (${local})`);
  await page.getByRole('button', { name: 'Clipboard', exact: true }).click();
  await page.getByRole('button', { name: 'Copy to my clipboard' }).click();
  await page.getByText('Copied to your clipboard.').waitFor({ timeout: 5000 });
  const taken = await page.evaluate(() => navigator.clipboard.readText());
  check(taken === copied, `Copy to my clipboard left ${taken}`);
  await page.getByRole('button', { name: 'Clipboard', exact: true }).click();
  log('a copy in the desktop reached this computer only when she asked');

  // An image, both ways. This computer's clipboard holds a picture and no text: Paste from my
  // clipboard sends it; a program in the desktop reads it as image/png and copies its hash
  // back as text. Then the program copies the picture itself: the viewer shows it, leaves
  // this computer's clipboard alone, and Copy to my clipboard takes it there.
  const sentHash = await page.evaluate(async () => {
    const c = document.createElement('canvas');
    c.width = 96;
    c.height = 64;
    const g = c.getContext('2d');
    for (let x = 0; x < 96; x += 8) {
      g.fillStyle = `hsl(${x * 4}, 80%, 50%)`;
      g.fillRect(x, 0, 8, 64);
    }
    const blob = await new Promise((resolve) => c.toBlob(resolve, 'image/png'));
    await navigator.clipboard.write([new ClipboardItem({ 'image/png': blob })]);
    // What the viewer reads back (the browser may have encoded it again).
    const [item] = await navigator.clipboard.read();
    const bytes = await (await item.getType('image/png')).arrayBuffer();
    const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
    return Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
  });
  await page.getByRole('button', { name: 'Clipboard', exact: true }).click();
  await page.getByRole('button', { name: 'Paste from my clipboard' }).click();
  await page.getByText('Image sent to the desktop.').waitFor({ timeout: 10000 });
  await page.getByRole('button', { name: 'Clipboard', exact: true }).click();
  await page.evaluate(() => navigator.clipboard.writeText('before-image'));
  // The panel took room from the desktop, which followed: keys typed while its screen changes
  // size back can be lost, so wait until it has.
  await page.waitForFunction(() => document.getElementById('screen').width === 1280 && document.getElementById('screen').height === 800, null, { timeout: 15000 });
  await sleep(5000);
  await page.locator('#screen').focus();
  await typeAsPerson(page, 'xclip -o -selection clipboard -t image/png > /tmp/in.png', 60);
  await page.keyboard.press('Enter');
  await sleep(3000);
  await typeAsPerson(page, 'sha256sum /tmp/in.png | xclip -selection clipboard', 60);
  await page.keyboard.press('Enter');
  await page.waitForFunction((h) => document.getElementById('clip-out').value.startsWith(`${h} `), sentHash, { timeout: 60000 })
    .catch(async (e) => {
      await shot(page, 'e2e-05-viewer-no-image-hash.png');
      throw new Error(`the desktop did not get the image ${sentHash} (the viewer shows ${JSON.stringify(await page.locator('#clip-out').inputValue())}): ${e.message}`);
    });
  await sleep(3000);
  await typeAsPerson(page, 'xclip -selection clipboard -t image/png -i /tmp/in.png', 60);
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => {
    const img = document.getElementById('clip-out-image');
    return !img.hidden && img.complete && img.naturalWidth === 96 && img.naturalHeight === 64;
  }, null, { timeout: 60000 }).catch(async (e) => {
    await shot(page, 'e2e-05-viewer-no-image.png');
    throw new Error(`the desktop's image never showed in the viewer: ${e.message}`);
  });
  const untouched = await page.evaluate(() => navigator.clipboard.readText());
  check(untouched === 'before-image', `an image the user did not ask for reached this computer's clipboard (${untouched})`);
  await page.getByRole('button', { name: 'Clipboard', exact: true }).click();
  await page.getByRole('button', { name: 'Copy to my clipboard' }).click();
  await page.getByText('Copied to your clipboard.').waitFor({ timeout: 5000 });
  const got = await page.evaluate(async () => {
    const [item] = await navigator.clipboard.read();
    if (!item.types.includes('image/png')) return item.types.join(', ');
    const bitmap = await createImageBitmap(await item.getType('image/png'));
    return `${bitmap.width}x${bitmap.height}`;
  });
  check(got === '96x64', `Copy to my clipboard left ${got}, not the desktop's 96x64 image`);
  await shot(page, 'e2e-05-viewer-clipboard-image.png');
  await page.getByRole('button', { name: 'Clipboard', exact: true }).click();
  log('an image crossed the clipboard both ways, to this computer only when she asked');

  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByRole('heading', { name: 'Sign in to Atrium' }).waitFor({ timeout: 15000 });
  const me = await page.evaluate(async () => (await fetch('/api/v1/me')).status);
  check(me === 401, `after sign-out /api/v1/me answered ${me}`);
  await shot(page, 'e2e-06-signed-out.png');
  await ctx.close();

  // --- An administrator creates a pool and sees it listed.
  const admin = await browser('admin');
  await signIn(admin.page, 'carol', 'carol-pw');
  await admin.page.getByRole('heading', { name: 'My desktops' }).waitFor({ timeout: 15000 });
  await admin.page.getByRole('link', { name: 'Pools' }).click();
  await admin.page.getByRole('heading', { name: 'Pools' }).waitFor();
  await admin.page.getByLabel('Name', { exact: true }).fill('e2e-pool');
  await admin.page.getByLabel('Maximum size', { exact: true }).fill('0');
  await admin.page.getByRole('button', { name: 'Create pool' }).click();
  await admin.page.locator('#pool-max_size-error').filter({ hasText: 'max_size' }).waitFor({ timeout: 10000 });
  await shot(admin.page, 'e2e-07-admin-validation.png');
  await admin.page.getByLabel('Maximum size', { exact: true }).fill('3');
  await admin.page.getByLabel('Ready spares', { exact: true }).fill('0');
  // A floating pool clones by default; a dedicated one cannot.
  const cloneBox = admin.page.getByLabel('Start desktops as clones', { exact: true });
  check(await cloneBox.isChecked(), 'a new floating pool does not clone by default');
  await admin.page.getByLabel('Kind', { exact: true }).selectOption('dedicated');
  check(await cloneBox.isDisabled() && !(await cloneBox.isChecked()), 'a dedicated pool may clone');
  await admin.page.getByLabel('Kind', { exact: true }).selectOption('floating');
  // The runtime is the node's default unless the pool names one; the builtin VMM does not clone.
  const runtime = admin.page.getByLabel('Runtime', { exact: true });
  check(await runtime.inputValue() === '', 'a new pool names a runtime');
  await runtime.selectOption('builtin');
  check(await cloneBox.isDisabled() && !(await cloneBox.isChecked()), 'a builtin-runtime pool may clone');
  await runtime.selectOption('');
  await cloneBox.check();
  await admin.page.getByRole('button', { name: 'Create pool' }).click();
  await admin.page.getByRole('rowheader', { name: 'e2e-pool' }).waitFor({ timeout: 10000 });
  const poolRow = await admin.page.getByRole('row', { name: /e2e-pool/ }).textContent();
  check(poolRow.includes('console (clones)') && !poolRow.includes('runtime'), `the pool is listed as cloning on the default runtime: ${poolRow}`);
  // Its form keeps the runtime chosen for it.
  await admin.page.getByRole('button', { name: 'Edit pool e2e-pool' }).click();
  await admin.page.getByLabel('Runtime', { exact: true }).selectOption('qemu');
  await admin.page.getByRole('button', { name: 'Save' }).click();
  await admin.page.getByRole('row', { name: /e2e-pool.*qemu runtime/ }).waitFor({ timeout: 10000 });
  await admin.page.getByRole('button', { name: 'Edit pool e2e-pool' }).click();
  const kept = await admin.page.getByLabel('Runtime', { exact: true }).inputValue();
  check(kept === 'qemu', `the pool's form shows runtime ${JSON.stringify(kept)}, not qemu`);
  check(await admin.page.getByLabel('Start desktops as clones', { exact: true }).isChecked(), 'the edited pool stopped cloning');
  await admin.page.getByRole('button', { name: 'Cancel' }).click();
  // The pool page lists the desktops with the image version each runs and how it started.
  const desktopsTable = admin.page.getByRole('table', { name: 'Desktops' });
  await desktopsTable.locator('td', { hasText: /^[a-z0-9._-]+@\S+$/ }).first().waitFor({ timeout: 20000 });
  const started = await desktopsTable.locator('tbody tr td:nth-child(6)').allTextContents();
  check(started.some((t) => t === 'boot'), `the desktops table says how each started: ${started}`);
  await shot(admin.page, 'e2e-08-admin-pools.png');

  // --- She lets a new node in: a one-time enrolment token, shown once, then listed without it.
  await admin.page.getByRole('link', { name: 'Nodes' }).click();
  await admin.page.getByRole('heading', { name: 'Nodes' }).waitFor();
  await admin.page.getByRole('rowheader', { name: 'node-1' }).waitFor({ timeout: 10000 });
  await admin.page.getByLabel('Node id').fill('node-2');
  await admin.page.getByRole('button', { name: 'Create enrolment token' }).click();
  const token = (await admin.page.locator('#enrol-token').textContent({ timeout: 10000 })).trim();
  check(/^atrium-enrol-[A-Za-z0-9_-]{43}$/.test(token), `the enrolment token looks like ${token}`);
  await shot(admin.page, 'e2e-09-admin-enrolment.png');
  await admin.page.getByRole('link', { name: 'Pools' }).click();
  await admin.page.getByRole('link', { name: 'Nodes' }).click();
  await admin.page.getByRole('cell', { name: 'node-2', exact: true }).waitFor({ timeout: 10000 });
  check(!(await admin.page.content()).includes(token), 'the enrolment token is shown again');
  await admin.ctx.close();
  console.log(JSON.stringify({ done: true }));
}

main().then(() => process.exit(0), (e) => {
  log(e.stack || String(e));
  process.exit(1);
});
