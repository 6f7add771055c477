// The portal's administration pages in a real browser: Debian's Chromium (headless, through
// playwright-core) as an administrator. The Rust side (tests/tests/broker_portal.rs) checks what
// each step did through the API. Protocol: JSON lines on stdout, each answered with one line on
// stdin ("ok" to go on):
//   {"nodes": [ID...]}                      the Nodes page's nodes;
//   {"ended": USER}                         after ending USER's session on the Sessions page;
//   {"signed_out": USER, "status": TEXT}   after "Sign out everywhere" on USER's page;
//   {"token": TEXT}                         the new token the Tokens page showed once;
//   {"audit": [COUNT TEXT...], "csv_lines": N}  the Audit page filtered on the token: its count
//                                           before and after "Show older", and the CSV export's
//                                           lines;
//   {"revoked": NAME, "last_used": TEXT}    after revoking the token from the administrator's
//                                           own page (which lists the tokens she created);
//   {"done": true}.
//
//   node portal.mjs '{"broker": URL, "chromium": PATH, "tmp": DIR, "artifacts": DIR,
//                     "admin": [USER, PASSWORD], "user": USER}'

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ask, launch, passwordSignIn } from './lib.mjs';

const cfg = JSON.parse(process.argv[2]);
async function tell(o) {
  const answer = await ask(o);
  if (answer !== 'ok') throw new Error(`the test said ${answer}`);
}

const { ctx, page } = await launch(cfg, 'portal', { viewport: { width: 1300, height: 900 } });
page.on('dialog', (d) => d.accept());
try {
  await passwordSignIn(page, cfg.broker, cfg.admin[0], cfg.admin[1]);
  await page.getByRole('heading', { name: 'My desktops' }).waitFor();
  const status = page.locator('#status');

  // Nodes: what is enrolled.
  await page.getByRole('link', { name: 'Nodes' }).click();
  await page.getByRole('heading', { name: 'Nodes' }).waitFor();
  await page.locator('table tbody th[scope="row"]').first().waitFor();
  await tell({ nodes: await page.locator('table tbody th[scope="row"]').allInnerTexts() });

  // Sessions: end the user's session.
  await page.getByRole('link', { name: 'Sessions' }).click();
  await page.getByRole('button', { name: `End ${cfg.user}'s session` }).click();
  await status.filter({ hasText: `Session of ${cfg.user} ended` }).waitFor();
  await tell({ ended: cfg.user });

  // Users: find the user, open their page, sign them out everywhere.
  await page.getByRole('link', { name: 'Users' }).click();
  await page.getByLabel('Username starts with').fill(cfg.user.slice(0, 2));
  await page.getByRole('button', { name: 'Find' }).click();
  // The list shows only the user once the search has answered.
  await page.getByRole('link', { name: cfg.admin[0], exact: true }).waitFor({ state: 'detached' });
  await page.getByRole('link', { name: cfg.user, exact: true }).click();
  await page.getByRole('heading', { name: new RegExp(`\\(${cfg.user}\\)`) }).waitFor();
  await page.getByRole('button', { name: 'Sign out everywhere' }).click();
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

  // Audit: the token's uses, a page at a time, then all of them as CSV.
  await page.getByRole('link', { name: 'Audit' }).click();
  await page.getByLabel('User').fill('token:ci-reader');
  await page.getByRole('button', { name: 'Filter' }).click();
  const count = page.locator('#audit-count');
  await count.filter({ hasText: 'more older' }).waitFor();
  const first = await count.innerText();
  await page.locator('#audit-more').click();
  await count.filter({ hasNotText: first }).waitFor();
  const second = await count.innerText();
  const [download] = await Promise.all([
    page.waitForEvent('download'),
    page.getByRole('link', { name: 'Export CSV' }).click(),
  ]);
  const csv = readFileSync(await download.path(), 'utf8');
  await tell({ audit: [first, second], csv_lines: csv.split('\r\n').filter((l) => l).length });

  // The administrator's own page lists the token she created, and revokes it.
  await page.getByRole('link', { name: 'Users' }).click();
  await page.getByRole('link', { name: cfg.admin[0], exact: true }).click();
  await page.getByRole('heading', { name: 'API tokens they created' }).waitFor();
  const row = page.getByRole('table', { name: 'API tokens they created' }).getByRole('row', { name: /ci-reader/ });
  const lastUsed = await row.locator('td').nth(2).innerText();
  await row.getByRole('button', { name: 'Revoke ci-reader' }).click();
  await status.filter({ hasText: 'revoked' }).waitFor();
  await page.getByText('None in force.').waitFor();
  await tell({ revoked: 'ci-reader', last_used: lastUsed });
  console.log(JSON.stringify({ done: true }));
} catch (e) {
  await page.screenshot({ path: join(cfg.artifacts, 'portal-failure.png') }).catch(() => {});
  console.error(`portal: ${e.message}`);
  process.exitCode = 1;
}
await ctx.close();
process.exit(process.exitCode || 0);
