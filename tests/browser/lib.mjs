// What the browser drivers share: Debian's Chromium launched headless through playwright-core,
// the line protocol with the Rust side (one JSON line out, one line back on stdin), and the
// viewer's canvas (saved as a PNG for the Rust side to judge).

import { mkdtempSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

export const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run',
  // Sound plays without a real device, and without the gesture a person would make.
  '--autoplay-policy=no-user-gesture-required'];

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function check(cond, msg) {
  if (!cond) throw new Error(msg);
}

let lines = null;
// Writes `msg` as one JSON line on stdout and returns the Rust side's answer line.
export async function ask(msg) {
  lines ??= createInterface({ input: process.stdin })[Symbol.asyncIterator]();
  console.log(JSON.stringify(msg));
  const { value } = await lines.next();
  return (value || '').trim();
}

// A Chromium of its own (profile in a new folder under `cfg.tmp`); page errors go to stderr
// prefixed with `name`. `options` are playwright's (viewport, ignoreHTTPSErrors...).
export async function launch(cfg, name, options = {}) {
  const dir = mkdtempSync(join(cfg.tmp, `chromium-${name}-`));
  const ctx = await chromium.launchPersistentContext(dir, {
    executablePath: cfg.chromium, headless: true, args: ARGS,
    viewport: { width: 1400, height: 900 }, ...options,
  });
  const page = ctx.pages()[0] || await ctx.newPage();
  page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') console.error(`${name} console: ${m.text()}`); });
  page.on('pageerror', (e) => console.error(`${name} page error: ${e.message}`));
  return { ctx, page };
}

// Characters typed with Shift on a US keyboard, and the key under each. Playwright's
// keyboard.type sends such a character on its key without holding Shift, so a guest that takes
// physical keys (Atrium sends the key's code) would see the unshifted one: '.' for '>'.
const SHIFTED = {
  '!': 'Digit1', '@': 'Digit2', '#': 'Digit3', $: 'Digit4', '%': 'Digit5', '^': 'Digit6', '&': 'Digit7',
  '*': 'Digit8', '(': 'Digit9', ')': 'Digit0', _: 'Minus', '+': 'Equal', '{': 'BracketLeft',
  '}': 'BracketRight', '|': 'Backslash', ':': 'Semicolon', '"': 'Quote', '<': 'Comma', '>': 'Period',
  '?': 'Slash', '~': 'Backquote',
};

// Types `text` as a person on a US keyboard would: Shift held for capitals and the characters
// that need it.
export async function typeAsPerson(page, text, delay = 30) {
  for (const ch of text) {
    if (SHIFTED[ch]) await page.keyboard.press(`Shift+${SHIFTED[ch]}`, { delay: 5 });
    else if (ch >= 'A' && ch <= 'Z') await page.keyboard.press(`Shift+Key${ch}`, { delay: 5 });
    else await page.keyboard.type(ch);
    await sleep(delay);
  }
}

// Runs a shell command in the console desktop, its output copied through the console's
// clipboard file, and waits until the viewer's "From the desktop" box holds something `want`
// accepts.
export async function inDesktop(page, command, want) {
  await page.locator('#screen').focus();
  await typeAsPerson(page, `${command} | tee clipboard.txt\n`);
  for (let i = 0; i < 180; i++) {
    const text = await page.locator('#clip-out').inputValue();
    if (want(text)) return text;
    await sleep(500);
  }
  throw new Error(`no output of "${command}" reached the viewer`);
}

// Listens to everything the page plays: every connection to a sound output is also fed to an
// analyser of the test's (before the page's scripts run; `target` is a page or a context).
export async function tapSound(target) {
  await target.addInitScript(() => {
    const connect = AudioNode.prototype.connect;
    AudioNode.prototype.connect = function tapped(dest, ...rest) {
      if (dest instanceof AudioDestinationNode) {
        const ctx = dest.context;
        if (!ctx.atriumTestTap) {
          ctx.atriumTestTap = ctx.createAnalyser();
          ctx.atriumTestTap.fftSize = 8192;
          window.atriumTestTaps = (window.atriumTestTaps || []).concat([ctx.atriumTestTap]);
        }
        connect.call(this, ctx.atriumTestTap);
      }
      return connect.call(this, dest, ...rest);
    };
  });
}

// In the page: the loudest frequency the page plays now and its level, { hz, db } (db -Infinity
// when silent).
export const loudest = () => {
  let best = { hz: 0, db: -Infinity };
  for (const a of window.atriumTestTaps || []) {
    const bins = new Float32Array(a.frequencyBinCount);
    a.getFloatFrequencyData(bins);
    bins.forEach((db, i) => {
      if (db > best.db) best = { hz: (i * a.context.sampleRate) / a.fftSize, db };
    });
  }
  return best;
};

// The viewer's canvas as a PNG in `dir`; returns its path.
export async function canvasPng(page, dir, name, id = 'screen') {
  const url = await page.evaluate((i) => document.getElementById(i).toDataURL('image/png'), id);
  const path = join(dir, name);
  writeFileSync(path, Buffer.from(url.split(',')[1], 'base64'));
  return path;
}

// In the page: the viewer has a screen and no overlay (it is connected).
export const viewerConnected = () => {
  const c = document.getElementById('screen');
  const o = document.querySelector('.viewer-overlay');
  return Boolean(c && c.width > 1 && o && o.hidden);
};

export async function viewerOpen(page, timeout = 120000) {
  await page.waitForFunction(viewerConnected, null, { timeout });
}

// Asks the Rust side ({"shot": PATH, "phase": phase}) about the canvas every half second until
// it answers "ok", at most `tries` times; the canvas is saved as `name` in `dir`.
export async function untilCanvasShows(page, dir, phase, name, tries, failure) {
  for (let i = 0; ; i++) {
    await sleep(500);
    if ((await ask({ shot: await canvasPng(page, dir, name), phase })) === 'ok') return;
    check(i < tries, failure || `the desktop never showed in the canvas (${phase})`);
  }
}

// Signs in on Atrium's sign-in page at `url` with a directory username and password (clicks
// "Sign in"; the caller waits for what it expects next).
export async function passwordSignIn(page, url, user, password) {
  await page.goto(url);
  await page.getByRole('heading', { name: 'Sign in to Atrium' }).waitFor({ timeout: 30000 });
  await page.getByLabel('Username').fill(user);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in' }).click();
}

// From Atrium's sign-in page at `broker` through the OpenID provider's own pages (the test
// provider's login form, which takes any password, and its consent page) until the browser is
// back at Atrium; `cancel` cancels at the provider instead; `started` is called once the
// sign-in has left Atrium's page. Returns whether the provider asked who the user is (it does
// not when its own session is still open).
export async function throughProvider(page, broker, { login, cancel = false, started = null }) {
  const onBroker = () => page.url().startsWith(broker);
  let askedLogin = false;
  await page.goto(broker);
  await page.getByRole('heading', { name: 'Sign in to Atrium' }).waitFor({ timeout: 30000 });
  await page.locator('#sso').click();
  await page.waitForLoadState('domcontentloaded');
  if (started) await started();
  for (let step = 0; step < 6; step++) {
    await page.waitForLoadState('domcontentloaded');
    if (onBroker()) break;
    const form = page.locator('input[name="login"]');
    const consent = page.getByRole('button', { name: 'Continue' });
    await form.or(consent).first().waitFor({ timeout: 30000 }).catch(() => {});
    if (onBroker()) break;
    if (cancel) {
      await page.getByText('[ Cancel ]').click();
      break;
    }
    const before = page.url();
    if (await form.count()) {
      askedLogin = true;
      await form.fill(login);
      await page.locator('input[name="password"]').fill('any-password');
      await page.getByRole('button', { name: 'Sign-in' }).click();
    } else if (await consent.count()) {
      await consent.click();
    }
    // The next page: the consent page (another interaction) or Atrium.
    await page.waitForURL((u) => u.href !== before, { timeout: 30000 });
  }
  return askedLogin;
}

// On the page that sets up an authenticator app: reads the key it shows (as an app would scan
// it), types the code `codeFor(key)` answers, confirms; returns the recovery codes then shown
// once (the caller goes on from that page).
export async function setUpAuthenticator(page, codeFor) {
  await page.getByRole('heading', { name: 'Set up two-step verification' }).waitFor({ timeout: 30000 });
  await page.locator('#enrol-qr').waitFor();
  const secret = (await page.locator('#enrol-secret').innerText()).replace(/\s/g, '');
  await page.getByLabel('Code the app shows now').fill(await codeFor(secret));
  await page.getByRole('button', { name: 'Confirm' }).click();
  await page.getByRole('heading', { name: 'Your recovery codes' }).waitFor({ timeout: 15000 });
  return page.locator('#recovery-codes li').allInnerTexts();
}
