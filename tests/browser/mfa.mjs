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

import { join } from 'node:path';
import { ask, launch, passwordSignIn, setUpAuthenticator } from './lib.mjs';

const cfg = JSON.parse(process.argv[2]);
const { ctx, page } = await launch(cfg, 'mfa', { viewport: { width: 1200, height: 800 } });
page.on('dialog', (d) => d.accept());

const signIn = () => passwordSignIn(page, cfg.broker, cfg.user[0], cfg.user[1]);

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
  const codes = await setUpAuthenticator(page, (secret) => ask({ ask: 'code', secret }));
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
