// The browser half of `scripts/bench-display.sh --vs-novnc`: two headless Chromiums, one showing
// Atrium's viewer (web-client/viewer-dev.html through the display proxy), one showing Debian's
// noVNC (vnc_lite.html through websockify), both on the same guest. Runs the workload (the
// console's, or a video in the desktop) and prints JSON lines on stdout: {"mark": NAME} at phase
// boundaries (the Rust side samples bytes and CPU there) and {"result": {...}} at the end.
//
// Input-to-pixel latency is measured the same way in both pages: a capture-phase keydown
// listener notes the time, and an instrumented 2D canvas context notes the first drawing call
// after it.
//
//   node bench_vs_novnc.mjs '{"atrium": URL, "novnc": URL, "chromium": PATH, "tmp": DIR,
//                             "workload": "console"|"video"}'

import { mkdtempSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const cfg = JSON.parse(process.argv[2]);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const mark = (name) => console.log(JSON.stringify({ mark: name }));
const log = (msg) => console.error(`browser: ${msg}`);

const CHROMIUM_ARGS = [
  '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run',
];

// Runs in both pages before their own scripts.
function instrument() {
  const w = window;
  w.__draws = 0;
  w.__lastDraw = 0;
  w.__keyT = 0;
  w.__firstDrawAfterKey = 0;
  const note = () => {
    const t = performance.now();
    w.__draws += 1;
    w.__lastDraw = t;
    if (w.__keyT > 0 && w.__firstDrawAfterKey === 0 && t >= w.__keyT) w.__firstDrawAfterKey = t;
  };
  const P = CanvasRenderingContext2D.prototype;
  for (const name of ['drawImage', 'putImageData', 'fillRect']) {
    const orig = P[name];
    P[name] = function (...args) {
      const r = orig.apply(this, args);
      note();
      return r;
    };
  }
  window.addEventListener('keydown', () => {
    w.__keyT = performance.now();
    w.__firstDrawAfterKey = 0;
  }, true);
}

async function open(name, url) {
  const dir = mkdtempSync(join(cfg.tmp, `chromium-${name}-`));
  const ctx = await chromium.launchPersistentContext(dir, {
    executablePath: cfg.chromium,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1100, height: 850 },
  });
  const page = ctx.pages()[0] || (await ctx.newPage());
  page.on('console', (m) => { if (m.type() === 'error') log(`${name} console: ${m.text()}`); });
  page.on('pageerror', (e) => log(`${name} page error: ${e}`));
  await page.addInitScript(instrument);
  await page.goto(url);
  return { name, ctx, page };
}

// Characters typed with Shift on a US keyboard, and the key under them. Both viewers send the
// physical key (QEMU takes scancodes), so Shift must really be held.
const SHIFTED = {
  '~': '`', '!': '1', '@': '2', '#': '3', '$': '4', '%': '5', '^': '6', '&': '7', '*': '8',
  '(': '9', ')': '0', '_': '-', '+': '=', '{': '[', '}': ']', '|': '\\', ':': ';', '"': "'",
  '<': ',', '>': '.', '?': '/',
};

async function pressChar(page, ch) {
  if (ch === '\n') return page.keyboard.press('Enter');
  const base = SHIFTED[ch] ?? (ch >= 'A' && ch <= 'Z' ? ch.toLowerCase() : null);
  if (base === null) return page.keyboard.press(ch);
  await page.keyboard.down('Shift');
  await page.keyboard.press(base);
  await page.keyboard.up('Shift');
  return undefined;
}

async function focusCanvas(v) {
  await v.page.evaluate(() => {
    const c = document.querySelector('canvas');
    c.focus();
  });
}

// Waits until neither page has drawn for `quietMs` (at most `maxMs`).
async function quiet(views, quietMs = 1500, maxMs = 180000) {
  const start = Date.now();
  for (;;) {
    const idle = await Promise.all(views.map((v) => v.page.evaluate((q) => performance.now() - window.__lastDraw >= q, quietMs)));
    if (idle.every(Boolean)) return;
    if (Date.now() - start > maxMs) {
      for (const v of views) await v.page.screenshot({ path: join(cfg.tmp, `unsettled-${v.name}.png`) }).catch(() => {});
      throw new Error(`the screen never settled (screenshots in ${cfg.tmp})`);
    }
    await sleep(200);
  }
}

// Types `text` into `v`, measuring each key's input-to-pixel time in that page. The pauses
// vary around `gapMs` (from half to one and a half times it), as a person's do: with one fixed
// pause every key would fall at the same point of QEMU's 30 ms refresh timer, and the figure
// would depend on that one phase.
async function typeMeasured(v, text, gapMs) {
  const lat = [];
  await focusCanvas(v);
  for (const ch of text) {
    await v.page.evaluate(() => { window.__firstDrawAfterKey = 0; window.__keyT = 0; });
    await pressChar(v.page, ch);
    const pause = gapMs * (0.5 + Math.random());
    if (ch === ' ') {
      // With the cursor hidden a space draws nothing: not a sample.
      await sleep(pause);
      continue;
    }
    const ms = await v.page
      .waitForFunction(() => (window.__firstDrawAfterKey > 0 ? window.__firstDrawAfterKey - window.__keyT : false), null, { timeout: 5000, polling: 2 })
      .then((h) => h.jsonValue())
      .catch(() => null);
    if (ms !== null) lat.push(ms);
    await sleep(pause);
  }
  return lat;
}

async function type(v, text, gapMs = 40) {
  await focusCanvas(v);
  for (const ch of text) {
    await pressChar(v.page, ch);
    await sleep(gapMs);
  }
}

// The console workload: typing in each client, scrolling, full-screen redraws, idle.
async function consoleWorkload(atrium, novnc) {
  // The console's cursor blinks until the setup below stops it: no quiet moment before that.
  await sleep(3000);

  // An idle console whose cursor blinks (fbcon redraws it five times a second).
  mark('blink_start');
  await sleep(5000);
  mark('blink_end');

  // Setup, not measured: hide the cursor (a blinking cursor is a screen that changes, so an
  // idle screen would not be idle; the guest's user cannot turn fbcon's blinking off) and
  // clear the screen.
  await type(atrium, "printf '\\033[?25l\\033[?1c'; clear\n");
  await sleep(3000);
  for (const v of views) await v.page.screenshot({ path: join(cfg.tmp, `setup-${v.name}.png`) });
  await quiet(views, 2000, 30000);

  const phases = {};
  const phase = async (name, fn) => {
    mark(`${name}_start`);
    const t = Date.now();
    const out = await fn();
    await quiet(views, 2500);
    phases[name] = { secs: (Date.now() - t) / 1000 };
    mark(`${name}_end`);
    for (const v of views) await v.page.screenshot({ path: join(cfg.tmp, `${name}-${v.name}.png`) });
    log(`${name} done in ${phases[name].secs} s`);
    return out;
  };
  const frames0 = await Promise.all([atrium.page.evaluate(() => window.atriumFrames), novnc.page.evaluate(() => window.__flips)]);
  mark('measure_start');
  const sentence = 'echo the quick brown fox jumps over the lazy dog';
  const atriumLat = await phase('typing_atrium', async () => {
    const l = await typeMeasured(atrium, sentence, 150);
    await type(atrium, '\n');
    return l;
  });
  const novncLat = await phase('typing_novnc', async () => {
    const l = await typeMeasured(novnc, sentence, 150);
    await type(novnc, '\n');
    return l;
  });
  await phase('scroll', () => type(atrium,
    'for i in $(seq 1 300); do echo "line $i: the quick brown fox jumps over the lazy dog 0123456789"; done\n'));
  await phase('redraw', () => type(atrium,
    "for n in 1 2 3; do clear; yes 'full screen redraw: the quick brown fox jumps over the lazy dog 0123456789 ABCDEFGHIJKLMNOPQRSTUVWXYZ' | head -47; sleep 1; done; clear\n"));
  await sleep(1000);
  mark('idle_start');
  await sleep(10000);
  mark('idle_end');
  for (const v of views) await v.page.screenshot({ path: join(cfg.tmp, `idle-${v.name}.png`) });
  mark('measure_end');
  const frames1 = await Promise.all([atrium.page.evaluate(() => window.atriumFrames), novnc.page.evaluate(() => window.__flips)]);
  return {
    atrium_latencies_ms: atriumLat,
    novnc_latencies_ms: novncLat,
    atrium_frames: frames1[0] - frames0[0],
    novnc_frames: frames1[1] - frames0[1],
    phases,
  };
}

// The video workload (the desktop guest): a video plays in a window of the desktop (GStreamer's
// moving zone plate: continuous tones that change everywhere in each frame, 480x360 at 25
// frames a second) while both clients watch; bytes and CPU are sampled over 20 s of it.
async function videoWorkload(atrium, novnc) {
  // The session's terminal opens a moment after the session is up: wait for a settled screen.
  await quiet(views, 2000, 120000);
  await atrium.page.locator('canvas').first().click();
  await type(atrium, 'gst-launch-1.0 -q videotestsrc pattern=zone-plate kx2=6 ky2=6 kt=3 ! video/x-raw,width=480,height=360,framerate=25/1 ! ximagesink\n');
  // The first start scans GStreamer's plugins: slow under TCG.
  const pictures = () => atrium.page.evaluate(() => (window.atriumSession.video ? window.atriumSession.video.framesDrawn : 0));
  await atrium.page.waitForFunction(() => window.atriumSession.video && window.atriumSession.video.framesDrawn > 0, null, { timeout: 180000 })
    .catch(async () => {
      for (const v of views) await v.page.screenshot({ path: join(cfg.tmp, `novideo-${v.name}.png`) }).catch(() => {});
      throw new Error(`no video reached Atrium's viewer (screenshots in ${cfg.tmp})`);
    });
  log('the video plays; Atrium decodes it as video');
  await sleep(3000);
  const before = await Promise.all([pictures(), atrium.page.evaluate(() => window.atriumFrames), novnc.page.evaluate(() => window.__flips)]);
  mark('video_start');
  const t = Date.now();
  await sleep(20000);
  mark('video_end');
  const secs = (Date.now() - t) / 1000;
  const after = await Promise.all([pictures(), atrium.page.evaluate(() => window.atriumFrames), novnc.page.evaluate(() => window.__flips)]);
  for (const v of views) await v.page.screenshot({ path: join(cfg.tmp, `video-${v.name}.png`) });
  await atrium.page.keyboard.press('Control+c');
  return {
    secs,
    atrium_video_pictures: after[0] - before[0],
    atrium_frames: after[1] - before[1],
    novnc_frames: after[2] - before[2],
  };
}

const views = [];
try {
  const atrium = await open('atrium', cfg.atrium);
  const novnc = await open('novnc', cfg.novnc);
  views.push(atrium, novnc);

  // Count noVNC's completed framebuffer updates (Display.flip) and Atrium's frames.
  await novnc.page.evaluate(async () => {
    const m = await import('/novnc/core/display.js');
    const P = m.default.prototype;
    const flip = P.flip;
    window.__flips = 0;
    P.flip = function (...a) { window.__flips += 1; return flip.apply(this, a); };
  });
  await atrium.page.waitForFunction(() => window.atriumSession && window.atriumSession.connected, null, { timeout: 30000 });
  await novnc.page.waitForFunction(() => window.__draws > 0, null, { timeout: 30000 });
  log('both viewers connected');
  const result = cfg.workload === 'video' ? await videoWorkload(atrium, novnc) : await consoleWorkload(atrium, novnc);
  console.log(JSON.stringify({ result }));
} catch (e) {
  log(`failed: ${e.stack || e}`);
  process.exitCode = 1;
} finally {
  for (const v of views) await v.ctx.close().catch(() => {});
}
