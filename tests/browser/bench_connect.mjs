// The browser half of the connect benchmark (bench-connect): a user in headless Chromium signs
// in on the portal and clicks Connect on a graphical desktop pool with a ready spare, as a person
// does; the page itself times, from the click:
//   answer_ms:  the broker's answer to the connect call that carried the ticket,
//   connected_ms: the viewer connected to the display (its canvas sized and the "Connecting…"
//               cover gone; no picture of the desktop need have come yet),
//   desktop_ms: the first frame showing the user's session (the panel's row at the screen's
//               bottom, in the panel's colour).
// Then it signs out (the floating desktop ends; the pool refills) and goes on.
//
//   node bench_connect.mjs '{"broker": URL, "chromium": PATH, "tmp": DIR, "user": NAME,
//                             "password": PW, "order": [POOL, ...]}'
//
// Protocol on stdout: {"spare": POOL} before each connect (the Rust side answers "ok" once the
// pool has a ready spare), {"pool": POOL, "answer_ms": N, "connected_ms": N, "desktop_ms": N} after
// it (answered "ok"), {"done": true} at the end.

import { ask, check, launch, passwordSignIn } from './lib.mjs';

const cfg = JSON.parse(process.argv[2]);

// In the page: clicks the pool's Connect button and resolves with the times above.
function connectAndTime(pool) {
  // The session's panel (jwmrc.in's TrayStyle background).
  const PANEL = [0x1c, 0x27, 0x33];
  return new Promise((resolve, reject) => {
    let answer = null;
    let connected = null;
    const seen = new PerformanceObserver((list) => {
      for (const e of list.getEntries()) {
        if (e.name.endsWith(`/pools/${encodeURIComponent(pool)}/connect`)) answer = e.responseEnd - t0;
      }
    });
    seen.observe({ type: 'resource', buffered: false });
    const button = [...document.querySelectorAll('button')]
      .find((b) => b.getAttribute('aria-label') === `Connect to ${pool}`);
    if (!button) { reject(new Error(`no Connect button for ${pool}`)); return; }
    const t0 = performance.now();
    button.click();
    const deadline = t0 + 120000;
    const look = () => {
      const now = performance.now();
      if (now > deadline) { seen.disconnect(); reject(new Error(`${pool}: no desktop within 120 s`)); return; }
      const c = document.getElementById('screen');
      const o = document.querySelector('.viewer-overlay');
      if (c && c.width > 1 && o && o.hidden) {
        connected ??= now - t0;
        const row = c.getContext('2d').getImageData(0, c.height - 12, c.width, 1).data;
        let panel = 0;
        for (let i = 0; i < row.length; i += 4) {
          if (row[i] === PANEL[0] && row[i + 1] === PANEL[1] && row[i + 2] === PANEL[2]) panel++;
        }
        if (panel * 4 >= c.width) {
          seen.disconnect();
          resolve({ answer_ms: answer, connected_ms: connected, desktop_ms: now - t0 });
          return;
        }
      }
      requestAnimationFrame(look);
    };
    requestAnimationFrame(look);
  });
}

async function main() {
  const { ctx, page } = await launch(cfg, 'connect');
  for (const pool of cfg.order) {
    check((await ask({ spare: pool })) === 'ok', 'the bench gave up waiting for a spare');
    await passwordSignIn(page, cfg.broker, cfg.user, cfg.password);
    await page.getByRole('button', { name: `Connect to ${pool}` }).waitFor({ timeout: 30000 });
    const times = await page.evaluate(connectAndTime, pool);
    await ask({ pool, ...times });
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByRole('heading', { name: 'Sign in to Atrium' }).waitFor({ timeout: 30000 });
  }
  console.log(JSON.stringify({ done: true }));
  await ctx.close();
  // The line reader on stdin would keep the script alive.
  process.exit(0);
}

main().catch((e) => {
  console.error(`bench_connect: ${e.stack || e}`);
  process.exit(1);
});
