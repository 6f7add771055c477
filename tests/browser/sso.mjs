// Single sign-on in a real browser: Debian's Chromium (headless, through playwright-core) signs
// in to Atrium through an OpenID provider's own pages, as a person would. The Rust side
// (tests/tests/broker_sso.rs) sends one command per line on stdin and reads one JSON answer per
// line on stdout:
//
//   {"op": "sso", "login": L}        click "Sign in with ...", sign in at the provider as L
//                                     (if it asks), agree (if it asks), and come back;
//   {"op": "sso", "cancel": true}    the same, but cancel at the provider;
//   {"op": "sso", "fresh": true, ...} the same, forgetting the provider's session first;
//   {"op": "wrong_state"}            start a sign-in, then come back with another state;
//   {"op": "replay"}                 come back again with the last sign-in's code (and its
//                                     pending cookie, as an attacker who stole both would);
//   {"op": "signout"}                sign out (and at the provider, when Atrium sends it there);
//   {"op": "me"}                     GET /api/v1/me in the page;
//   {"op": "quit"}
//
// Page answers: {"url", "heading", "error", "user"} as the page shows them once it settled (and
// for `sso`, "asked_login": whether the provider asked who the user is).
//
//   node sso.mjs '{"broker": URL, "provider": ISSUER, "chromium": PATH, "tmp": DIR, "artifacts": DIR}'

import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { launch, throughProvider } from './lib.mjs';

const cfg = JSON.parse(process.argv[2]);

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const say = (o) => console.log(JSON.stringify(o));
async function nextLine() {
  const { value, done } = await lines.next();
  return done ? null : value.trim();
}

const { ctx, page } = await launch(cfg, 'sso', { viewport: { width: 1200, height: 800 } });

// The last redirect back to Atrium, and the pending sign-in cookie the browser held then.
let lastCallback = null;
let lastPending = null;
page.on('request', (req) => {
  if (req.url().startsWith(`${cfg.broker}/api/v1/auth/oidc/callback`)) lastCallback = req.url();
});

const onBroker = () => page.url().startsWith(cfg.broker);

// What the Atrium page shows once it has settled.
async function report() {
  await page.waitForURL((u) => u.href.startsWith(cfg.broker), { timeout: 30000 });
  // The portal (signed in) or the sign-in page.
  await page.locator('#user-box:not([hidden]), #signin-title').first().waitFor({ timeout: 30000 });
  await page.waitForTimeout(200);
  const text = async (sel) => {
    const l = page.locator(sel);
    return (await l.count()) && (await l.first().isVisible()) ? (await l.first().innerText()).trim() : null;
  };
  return {
    url: page.url(),
    heading: await text('h1'),
    error: await text('#signin-error'),
    user: await text('#user-name'),
  };
}

// From Atrium's sign-in page through the provider and back.
async function sso(cmd) {
  if (cmd.fresh) await ctx.clearCookies({ domain: new URL(cfg.provider).hostname });
  const started = async () => {
    const pending = (await ctx.cookies(cfg.broker)).find((c) => c.name.endsWith('atrium_oidc'));
    if (pending) lastPending = { name: pending.name, value: pending.value };
  };
  const askedLogin = await throughProvider(page, cfg.broker, { ...cmd, started });
  return { ...(await report()), asked_login: askedLogin };
}

for (;;) {
  const line = await nextLine();
  if (line === null) break;
  const cmd = JSON.parse(line);
  try {
    if (cmd.op === 'quit') break;
    if (cmd.op === 'sso') {
      say(await sso(cmd));
    } else if (cmd.op === 'wrong_state') {
      await page.goto(cfg.broker);
      await page.locator('#sso').click();
      await page.waitForURL((u) => !u.href.startsWith(cfg.broker), { timeout: 30000 });
      await page.goto(`${cfg.broker}/api/v1/auth/oidc/callback?code=made-up&state=not-the-one`);
      say(await report());
    } else if (cmd.op === 'replay') {
      if (lastPending) {
        await ctx.addCookies([{ name: lastPending.name, value: lastPending.value, url: cfg.broker }]);
      }
      await page.goto(lastCallback);
      say(await report());
    } else if (cmd.op === 'signout') {
      await page.getByRole('button', { name: 'Sign out' }).click();
      // At the provider: confirm.
      await page.waitForURL((u) => !u.href.startsWith(cfg.broker) || u.hash === '#/signin', { timeout: 30000 });
      if (!onBroker()) {
        await page.getByRole('button', { name: 'Yes, sign me out' }).click();
      }
      say(await report());
    } else if (cmd.op === 'me') {
      say(await page.evaluate(async () => {
        const r = await fetch('/api/v1/me', { credentials: 'same-origin' });
        return { status: r.status, body: r.ok ? await r.json() : null };
      }));
    } else {
      throw new Error(`unknown op ${cmd.op}`);
    }
  } catch (e) {
    await page.screenshot({ path: join(cfg.artifacts, 'sso-failure.png') }).catch(() => {});
    say({ failed: `${e.message}`, url: page.url() });
  }
}
await ctx.close();
// stdin stays open (the test holds it): leave without waiting for it.
process.exit(0);
