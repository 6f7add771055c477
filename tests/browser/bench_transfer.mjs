// The browser half of the file transfer benchmark (bench-transfer --browser): Atrium's viewer
// (web-client/viewer-dev.html) in headless Chromium uploads a file from disk into the desktop,
// or downloads one and has the browser save it, as the viewer's panels do. Prints `ready` once
// connected and the file chosen, then waits for a line on its standard input (the bench reads
// the browser's memory in between), and prints one JSON line at the end:
//   upload:   {"ms": N, "path": "...", "sha256": "hex the proxy computed", "linked": true when
//              sent as the PUT of its link}
//   download: {"ms": N (until the viewer had it whole), "saved_ms": N (until the browser saved
//              it), "streamed": true when not gathered in a Blob, "linked": true when the browser
//              fetched it over its link (else through the service worker), "sha256": "hex of the
//              saved file", "bytes": N}
//
//   node bench_transfer.mjs '{"url": URL, "chromium": PATH, "tmp": DIR, "mode": "upload"|"download",
//                              "file": PATH (upload), "name": NAME, "size": N (download)}'

import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { launch } from './lib.mjs';

const cfg = JSON.parse(process.argv[2]);
const { ctx, page } = await launch(cfg, `transfer-${cfg.mode}`, { acceptDownloads: true });
const go = () => new Promise((resolve) => process.stdin.once('data', resolve));
await page.goto(cfg.url);
await page.waitForFunction(() => document.getElementById('state').textContent.startsWith('connected'), null, { timeout: 60000 });

let result;
if (cfg.mode === 'upload') {
  // A file input as the Upload button has: the File the page gets is backed by the disk.
  await page.evaluate(() => {
    const input = document.createElement('input');
    input.type = 'file';
    input.id = 'bench-file';
    document.body.append(input);
  });
  await page.setInputFiles('#bench-file', cfg.file);
  console.log('ready');
  await go();
  result = await page.evaluate(() => new Promise((resolve) => {
    const s = window.atriumSession;
    const t0 = performance.now();
    const id = s.upload(document.getElementById('bench-file').files[0]);
    if (id === null) resolve({ error: 'this viewer may not upload' });
    s.on('upload', (u) => {
      if (u.id !== id) return;
      if (u.state === 'saved') resolve({ ms: performance.now() - t0, path: u.path, sha256: u.sha256, linked: u.linked });
      else if (u.state !== 'sending' && u.state !== 'cancelling') resolve({ error: `${u.state}: ${u.message}` });
    });
  }));
} else {
  // The service worker that streams downloads to disk starts with the page.
  await page.waitForFunction(async () => (await navigator.serviceWorker.getRegistrations()).some((r) => r.active),
    null, { timeout: 30000 });
  console.log('ready');
  await go();
  const t0 = Date.now();
  const download = page.waitForEvent('download', { timeout: 0 });
  result = await page.evaluate(({ name, size }) => new Promise((resolve) => {
    const s = window.atriumSession;
    const t0 = performance.now();
    const id = s.download({ name, size });
    if (id === null) resolve({ error: 'this viewer may not download' });
    s.on('download', (d) => {
      if (d.id !== id) return;
      if (d.state === 'saved') {
        // As the download panel saves it (web-client/js/pages/downloads.js): the browser has
        // it already when it fetched the link or streamed through the service worker, else it
        // is given the Blob.
        if (d.blob) {
          const a = document.createElement('a');
          a.href = URL.createObjectURL(d.blob);
          a.download = name;
          document.body.append(a);
          a.click();
          a.remove();
        }
        resolve({ ms: performance.now() - t0, streamed: !d.blob, linked: d.linked });
      } else if (['refused', 'cancelled', 'failed'].includes(d.state)) {
        resolve({ error: `${d.state}: ${d.message}` });
      }
    });
  }), { name: cfg.name, size: cfg.size });
  if (!result.error) {
    const path = await (await download).path();
    result.saved_ms = Date.now() - t0;
    const hash = createHash('sha256');
    let bytes = 0;
    for await (const chunk of createReadStream(path)) {
      hash.update(chunk);
      bytes += chunk.length;
    }
    result.sha256 = hash.digest('hex');
    result.bytes = bytes;
  }
}
await ctx.close();
if (result.error) {
  console.error(`bench_transfer: ${result.error}`);
  process.exit(1);
}
console.log(JSON.stringify(result));
process.exit(0);
