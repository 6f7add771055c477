// Enterprise sign-in end to end, in real browsers (Debian's Chromium, headless, through
// playwright-core), against real graphical desktops: a directory user (password) and a user the
// OpenID provider alone knows (single sign-on) each pass two-step verification where policy asks
// for it, set up on the way, and work in a desktop signed in as themselves; an administrator
// signs the single sign-on user out everywhere from the Users page, and that user's viewer ends
// and lands on the sign-in page, while the other user's viewer stays. The Rust side
// (tests/tests/e2e_enterprise_signin.rs) starts the services, computes the codes as an
// authenticator app would, and judges the canvases.
//
//   node enterprise_signin.mjs '{"broker": URL, "chromium": PATH, "artifacts": DIR, "tmp": DIR,
//                                "sso_login": LOGIN}'
//
// Protocol on stdout: JSON lines, each answered by one line on stdin.
//   {"phase": "code", "user": U, "secret": S}  U sets up an authenticator app with key S
//                                              -> the code it shows now
//   {"phase": "codes", "user": U, "codes": [...]}  the recovery codes U was shown -> "ok"
//   {"phase": "desktop_<U>", "shot": PATH}    U's viewer canvas -> "ok" (U's own session shows)
//                                              or "more" (take another)
//   {"phase": "revoked", "user": U, "ms": N}   U's viewer ended N ms after the administrator
//                                              clicked -> "ok"
//   {"done": true}                             (no answer)
// Failures throw (exit code 1) with a message on stderr.

import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import {
  ask, check, launch, passwordSignIn, setUpAuthenticator, sleep, throughProvider, untilCanvasShows,
  viewerConnected, viewerOpen,
} from './lib.mjs';

const cfg = JSON.parse(process.argv[2]);
const log = (msg) => console.error(`enterprise: ${msg}`);

async function shot(page, name) {
  await page.screenshot({ path: join(cfg.artifacts, name) });
}

// The set-up page policy sends a user to when they have no second factor yet: the key as text
// (the QR code holds the same), a code from the Rust side's authenticator, the recovery codes.
async function setUpSecondFactor(page, user) {
  const codes = await setUpAuthenticator(page, async (secret) => {
    await shot(page, `enterprise-${user}-01-mfa-setup.png`);
    return ask({ phase: 'code', user, secret });
  });
  check((await ask({ phase: 'codes', user, codes })) === 'ok', 'the recovery codes were refused');
  await page.getByRole('button', { name: 'I have saved these codes' }).click();
}

async function connectToDesktop(page, user) {
  await page.getByRole('heading', { name: 'My desktops' }).waitFor({ timeout: 15000 });
  await page.getByRole('button', { name: 'Connect to desktop' }).click();
}

async function seeOwnDesktop(page, user) {
  await viewerOpen(page, 240000);
  await untilCanvasShows(page, cfg.artifacts, `desktop_${user}`, `enterprise-${user}-canvas.png`, 240,
    `${user}'s graphical desktop never showed their session`);
  await shot(page, `enterprise-${user}-02-viewer.png`);
}

async function main() {
  // --- A directory user signs in with her password. Policy asks for the second factor before
  // connecting to the desktop pool, not at sign-in: she sets it up on the way to her desktop,
  // and the viewer then connects.
  const alice = await launch(cfg, 'alice');
  await passwordSignIn(alice.page, cfg.broker, 'alice', 'alice-pw');
  await connectToDesktop(alice.page, 'alice');
  await setUpSecondFactor(alice.page, 'alice');
  await seeOwnDesktop(alice.page, 'alice');

  // --- A user the provider alone knows signs in through it. Policy asks their group for the
  // second factor at sign-in: they set it up when they come back from the provider.
  const sso = await launch(cfg, 'sso');
  const asked = await throughProvider(sso.page, cfg.broker, { login: cfg.sso_login });
  check(asked, 'the provider did not ask who the user is');
  await setUpSecondFactor(sso.page, cfg.sso_login);
  await connectToDesktop(sso.page, cfg.sso_login);
  await seeOwnDesktop(sso.page, cfg.sso_login);

  // --- An administrator finds that user on the Users page and signs them out everywhere.
  const admin = await launch(cfg, 'admin');
  admin.page.on('dialog', (d) => d.accept());
  await passwordSignIn(admin.page, cfg.broker, 'carol', 'carol-pw');
  await admin.page.getByRole('heading', { name: 'My desktops' }).waitFor({ timeout: 15000 });
  await admin.page.getByRole('link', { name: 'Users' }).click();
  await admin.page.getByRole('heading', { name: 'Users' }).waitFor();
  await admin.page.getByLabel('Username starts with').fill(cfg.sso_login);
  await admin.page.getByRole('button', { name: 'Find' }).click();
  // The list shows only that user once the search has answered.
  await admin.page.getByRole('link', { name: 'alice', exact: true }).waitFor({ state: 'detached' });
  await admin.page.getByRole('link', { name: cfg.sso_login, exact: true }).click();
  const signOut = admin.page.getByRole('button', { name: 'Sign out everywhere' });
  await signOut.waitFor();
  check(await sso.page.evaluate(viewerConnected), 'the viewer was not connected before the sign-out');
  const clicked = performance.now();
  await signOut.click();
  await admin.page.getByText(`${cfg.sso_login} is signed out everywhere (1 sign-in ended).`).waitFor({ timeout: 15000 });
  await shot(admin.page, 'enterprise-admin-signed-out.png');

  // Their viewer ends and they are on the sign-in page, told why.
  await sso.page.locator('#signin-error').filter({ hasText: 'an administrator signed you out' }).waitFor({ timeout: 30000 });
  const ms = Math.round(performance.now() - clicked);
  log(`the signed-out user was on the sign-in page ${ms} ms after the click`);
  await shot(sso.page, `enterprise-${cfg.sso_login}-03-signed-out.png`);
  const me = await sso.page.evaluate(async () => (await fetch('/api/v1/me')).status);
  check(me === 401, `after being signed out everywhere /api/v1/me answered ${me}`);
  // Going back to the desktop asks them to sign in again.
  await sso.page.goBack();
  await sso.page.waitForURL((u) => u.hash === '#/signin', { timeout: 15000 });
  check((await ask({ phase: 'revoked', user: cfg.sso_login, ms })) === 'ok', 'the revocation was not confirmed');

  // The other user works on: still connected, still signed in.
  await sleep(1000);
  check(await alice.page.evaluate(viewerConnected), "the other user's viewer ended too");
  const aliceMe = await alice.page.evaluate(async () => (await fetch('/api/v1/me')).status);
  check(aliceMe === 200, `the other user's /api/v1/me answered ${aliceMe}`);

  for (const b of [alice, sso, admin]) await b.ctx.close();
  console.log(JSON.stringify({ done: true }));
}

main().then(() => process.exit(0), (e) => {
  log(e.stack || String(e));
  process.exit(1);
});
