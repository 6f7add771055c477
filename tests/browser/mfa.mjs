// Two-step verification in a real browser: Debian's Chromium (headless, through
// playwright-core) sets up an authenticator app and signs in with codes, as a person does. The
// codes come from the Rust side (tests/tests/broker_mfa.rs), which computes them like an
// authenticator app. Protocol: JSON lines on stdout; those with "ask" wait for one line on
// stdin:
//   {"ask": "code", "secret": S}      the key the set-up page shows; answer: a code;
//   {"codes": [...]}                  the recovery codes shown once (answer "ok");
//   {"ask": "code"}                   at the sign-in's code page; answer: a code to type;
//   {"result": {"heading", "error"}}  what the page shows after a code (answer: another code
//                                     to type, or "next" to go on);
//   {"done": true}.
//
//   node mfa.mjs '{"broker": URL, "chromium": PATH, "tmp": DIR, "artifacts": DIR,
//                  "user": [NAME, PASSWORD], "rounds": N}'

import { mkdtempSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const cfg = JSON.parse(process.argv[2]);
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run'];
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function ask(o) {
  console.log(JSON.stringify(o));
  const { value } = await lines.next();
  return (value || '').trim();
}

const ctx = await chromium.launchPersistentContext(mkdtempSync(join(cfg.tmp, 'chromium-mfa-')), {
  executablePath: cfg.chromium, headless: true, args: ARGS, viewport: { width: 1200, height: 800 },
});
const page = ctx.pages()[0] || await ctx.newPage();
page.on('dialog', (d) => d.accept());
page.on('pageerror', (e) => console.error(`mfa: page error: ${e.message}`));

async function signIn() {
  await page.goto(cfg.broker);
  await page.getByRole('heading', { name: 'Sign in to Atrium' }).waitFor();
  await page.getByLabel('Username').fill(cfg.user[0]);
  await page.getByLabel('Password').fill(cfg.user[1]);
  await page.getByRole('button', { name: 'Sign in' }).click();
}

async function settled() {
  await page.waitForTimeout(300);
  const heading = (await page.locator('h1').first().innerText()).trim();
  const err = page.locator('#mfa-error');
  const error = (await err.count()) ? (await err.innerText()).trim() : '';
  return { heading, error };
}

try {
  // First sign-in: policy asks for the second factor, and none is set up: set one up.
  await signIn();
  await page.getByRole('heading', { name: 'Set up two-step verification' }).waitFor();
  await page.locator('#enrol-qr').waitFor();
  const secret = (await page.locator('#enrol-secret').innerText()).replace(/\s/g, '');
  const first = await ask({ ask: 'code', secret });
  await page.getByLabel('Code the app shows now').fill(first);
  await page.getByRole('button', { name: 'Confirm' }).click();
  await page.getByRole('heading', { name: 'Your recovery codes' }).waitFor();
  const codes = await page.locator('#recovery-codes li').allInnerTexts();
  await ask({ codes });
  await page.getByRole('button', { name: 'I have saved these codes' }).click();
  await page.getByRole('heading', { name: 'My desktops' }).waitFor();

  // Later sign-ins: a code each time, as the Rust side decides (it answers "next" to go on).
  for (let round = 0; round < cfg.rounds; round++) {
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByRole('heading', { name: 'Sign in to Atrium' }).waitFor();
    await signIn();
    await page.getByRole('heading', { name: 'Two-step verification' }).waitFor();
    let code = await ask({ ask: 'code' });
    while (code !== 'next') {
      await page.getByLabel(/Code from your authenticator app/).fill(code);
      await page.getByRole('button', { name: 'Verify' }).click();
      await page.waitForFunction(() => {
        const h = document.querySelector('h1');
        const e = document.getElementById('mfa-error');
        return (h && h.textContent !== 'Two-step verification') || (e && e.textContent);
      }, null, { timeout: 15000 });
      code = await ask({ result: await settled() });
    }
  }
  console.log(JSON.stringify({ done: true }));
} catch (e) {
  await page.screenshot({ path: join(cfg.artifacts, 'mfa-failure.png') }).catch(() => {});
  console.error(`mfa: ${e.message}`);
  process.exitCode = 1;
}
await ctx.close();
process.exit(process.exitCode || 0);
