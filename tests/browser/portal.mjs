// The portal's Users and API tokens pages in a real browser: Debian's Chromium (headless,
// through playwright-core) as an administrator. The Rust side (tests/tests/broker_portal.rs)
// checks what each step did through the API. Protocol: JSON lines on stdout, each answered with
// one line on stdin ("ok" to go on):
//   {"signed_out": USER, "status": TEXT}   after "Sign out everywhere" on USER's page;
//   {"token": TEXT}                         the new token the Tokens page showed once;
//   {"revoked": NAME, "last_used": TEXT}    after revoking it;
//   {"done": true}.
//
//   node portal.mjs '{"broker": URL, "chromium": PATH, "tmp": DIR, "artifacts": DIR,
//                     "admin": [USER, PASSWORD], "user": USER}'

import { mkdtempSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const cfg = JSON.parse(process.argv[2]);
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run'];
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function tell(o) {
  console.log(JSON.stringify(o));
  const { value } = await lines.next();
  if ((value || '').trim() !== 'ok') throw new Error(`the test said ${value}`);
}

const ctx = await chromium.launchPersistentContext(mkdtempSync(join(cfg.tmp, 'chromium-portal-')), {
  executablePath: cfg.chromium, headless: true, args: ARGS, viewport: { width: 1300, height: 900 },
});
const page = ctx.pages()[0] || await ctx.newPage();
page.on('dialog', (d) => d.accept());
page.on('pageerror', (e) => console.error(`portal: page error: ${e.message}`));
try {
  await page.goto(cfg.broker);
  await page.getByLabel('Username').fill(cfg.admin[0]);
  await page.getByLabel('Password').fill(cfg.admin[1]);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'My desktops' }).waitFor();

  // Users: find the user, open their page, sign them out everywhere.
  await page.getByRole('link', { name: 'Users' }).click();
  await page.getByLabel('Username starts with').fill(cfg.user.slice(0, 2));
  await page.getByRole('button', { name: 'Find' }).click();
  await page.getByRole('link', { name: cfg.user, exact: true }).click();
  await page.getByRole('heading', { name: new RegExp(`\\(${cfg.user}\\)`) }).waitFor();
  await page.getByRole('button', { name: 'Sign out everywhere' }).click();
  const status = page.locator('#status');
  await status.filter({ hasText: 'signed out everywhere' }).waitFor();
  await tell({ signed_out: cfg.user, status: await status.innerText() });

  // API tokens: create one (shown once), then revoke it after the test has used it.
  await page.getByRole('link', { name: 'API tokens' }).click();
  await page.getByLabel('Name').fill('ci-reader');
  await page.getByLabel('Scope').selectOption('read');
  await page.getByLabel('Expires in (days)').fill('30');
  await page.getByRole('button', { name: 'Create token' }).click();
  const token = await page.locator('#new-token').innerText();
  await tell({ token });
  await page.reload();
  await page.getByRole('heading', { name: 'API tokens' }).waitFor();
  const row = page.getByRole('row', { name: /ci-reader/ });
  const lastUsed = await row.locator('td').nth(3).innerText();
  await row.getByRole('button', { name: 'Revoke ci-reader' }).click();
  await status.filter({ hasText: 'revoked' }).waitFor();
  await tell({ revoked: 'ci-reader', last_used: lastUsed });
  console.log(JSON.stringify({ done: true }));
} catch (e) {
  await page.screenshot({ path: join(cfg.artifacts, 'portal-failure.png') }).catch(() => {});
  console.error(`portal: ${e.message}`);
  process.exitCode = 1;
}
await ctx.close();
process.exit(process.exitCode || 0);
