// Uploads and downloads as a user makes them, in Chromium (tests/tests/e2e_file_transfer.rs
// starts the services, with clamd, and checks the audit log). Alice connects to a console
// desktop of a pool whose policy lets her upload and download: a file through the "Upload
// files" button and one dropped onto the desktop land in ~/Transfer with the hash she sent;
// the EICAR test file is refused, saying what the scanner found; a large upload is cancelled
// halfway. In the desktop, the folder holds the two files and nothing else, with the content
// she sent. Then the other way: "Download files" lists the folder, and the browser saves
// report.bin with the hash it went in with, and a file she wrote in the desktop; the EICAR
// file she writes there is refused, and the browser saves nothing of it.
//
//   node file_transfer.mjs '{"broker": URL, "chromium": PATH, "artifacts": DIR, "tmp": DIR, "eicar": TEXT}'
//
// Protocol on stdout: {"shot": PATH, "phase": "console"} asks the Rust side whether the
// console shows ("ok" or "more"); {"done": true, "report_sha256": HEX} at the end.

import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { check, inDesktop, launch, passwordSignIn, sleep, untilCanvasShows, viewerOpen } from './lib.mjs';

const cfg = JSON.parse(process.argv[2]);
const log = (msg) => console.error(`file_transfer: ${msg}`);
const shot = (page, name) => page.screenshot({ path: join(cfg.artifacts, name) });

const row = (page, name) => page.locator('.upload-row', { hasText: name });
async function ended(page, name, text, timeout = 180000) {
  const status = row(page, name).locator('.upload-status', { hasText: text });
  await status.waitFor({ timeout });
  return status.textContent();
}

async function main() {
  const { page } = await launch(cfg, 'user');
  await passwordSignIn(page, cfg.broker, 'alice', 'alice-pw');
  await page.getByRole('heading', { name: 'My desktops' }).waitFor({ timeout: 15000 });
  await page.getByRole('button', { name: 'Connect to files' }).click();
  await viewerOpen(page);
  await untilCanvasShows(page, cfg.artifacts, 'console', 'uploads-console.png', 120);
  const button = page.getByRole('button', { name: 'Upload files' });
  await button.waitFor({ timeout: 10000 });

  // The button: a file of several megabytes, with progress, saved with the hash sent.
  const report = randomBytes((3 << 20) + 4321);
  const reportSha = createHash('sha256').update(report).digest('hex');
  const chooser = page.waitForEvent('filechooser');
  await button.click();
  await (await chooser).setFiles({ name: 'report.bin', mimeType: 'application/octet-stream', buffer: report });
  const saved = await ended(page, 'report.bin', 'Saved as');
  check(saved.includes('/home/user/Transfer/report.bin'), `report.bin: ${saved}`);
  check((await row(page, 'report.bin').getAttribute('title')) === `SHA-256 ${reportSha}`, 'the saved file\'s hash is the one sent');
  check(await row(page, 'report.bin').getAttribute('data-via') === 'link', 'report.bin went as the PUT of its link');
  log(`report.bin: ${saved}`);

  // Dropped onto the desktop.
  const dropped = await page.evaluateHandle(() => {
    const dt = new DataTransfer();
    dt.items.add(new File(['dropped by alice\n'], 'dropped.txt', { type: 'text/plain' }));
    return dt;
  });
  await page.dispatchEvent('.viewer-screen', 'dragover', { dataTransfer: dropped });
  check(await page.locator('.drop-hint').isVisible(), 'dragging files over the desktop says where they go');
  await page.dispatchEvent('.viewer-screen', 'drop', { dataTransfer: dropped });
  log(`dropped.txt: ${await ended(page, 'dropped.txt', 'Saved as /home/user/Transfer/dropped.txt')}`);

  // The EICAR test file: refused, and the user is told what was found.
  const eicarChooser = page.waitForEvent('filechooser');
  await button.click();
  await (await eicarChooser).setFiles({ name: 'eicar.com', mimeType: 'application/octet-stream', buffer: Buffer.from(cfg.eicar) });
  const refused = await ended(page, 'eicar.com', 'Eicar-Test-Signature');
  check(refused.includes('not put in your desktop'), `eicar.com: ${refused}`);
  await shot(page, 'uploads-01-refused.png');
  log(`eicar.com: ${refused}`);

  // A large upload, cancelled once it is under way.
  const bigChooser = page.waitForEvent('filechooser');
  await button.click();
  await (await bigChooser).setFiles({ name: 'big.iso', mimeType: 'application/octet-stream', buffer: randomBytes(20 << 20) });
  const big = row(page, 'big.iso');
  await big.waitFor({ timeout: 60000 });
  const underWay = await page.waitForFunction(() => {
    const r = [...document.querySelectorAll('.upload-row')].find((e) => e.textContent.includes('big.iso'));
    return r && Number(r.querySelector('progress').value) > 0;
  }, null, { timeout: 60000 }).then(() => true, () => false);
  check(underWay, `big.iso never got under way: ${await big.textContent()}`);
  await big.getByRole('button', { name: 'Cancel' }).click();
  log(`big.iso: ${await ended(page, 'big.iso', 'Cancelled')}`);

  // In the desktop: the two files, nothing else (no part of big.iso, no hidden file), and
  // the dropped file's content.
  const listing = await inDesktop(page, 'echo $(ls -A Transfer)', (t) => t.trim().length > 0);
  check(listing.trim() === 'dropped.txt report.bin', `the transfer folder holds: ${listing}`);
  await inDesktop(page, 'cat Transfer/dropped.txt', (t) => t === 'dropped by alice\n');
  await shot(page, 'uploads-02-done.png');

  // Downloads: a file alice writes in the desktop, and the EICAR test file typed there.
  await inDesktop(page, 'echo written by alice > Transfer/made.txt; echo ok', (t) => t === 'ok\n');
  const eicarSha = createHash('sha256').update(cfg.eicar).digest('hex');
  await inDesktop(page, `printf '%s' '${cfg.eicar}' > Transfer/eicar.txt; sha256sum Transfer/eicar.txt`,
    (t) => t.startsWith(eicarSha));
  await page.getByRole('button', { name: 'Download files' }).click();
  const files = page.locator('#download-files');
  await files.getByText('made.txt').waitFor({ timeout: 30000 });
  const listed = await files.locator('.upload-name').allTextContents();
  check(JSON.stringify([...listed].sort()) === JSON.stringify(['dropped.txt', 'eicar.txt', 'made.txt', 'report.bin']),
    `the download list: ${listed}`);
  check(listed[0] === 'eicar.txt', `the newest file first: ${listed}`);
  const fetched = async (name) => {
    const saving = page.waitForEvent('download', { timeout: 180000 });
    await page.getByRole('button', { name: `Download ${name}` }).click();
    const d = await saving;
    check(d.suggestedFilename() === name, `saved as ${d.suggestedFilename()}`);
    // Fetched by the browser's own download over its one-time link (/files/{vm}/{token}, beside
    // the display connection): not a byte of it passed through the page.
    check(/^\/files\/[^/]+\/[0-9a-f]{32}$/.test(new URL(d.url()).pathname), `fetched over its link: ${d.url()}`);
    return readFileSync(await d.path());
  };
  const back = await fetched('report.bin');
  check(createHash('sha256').update(back).digest('hex') === reportSha, 'report.bin came back as it went in');
  check((await fetched('made.txt')).toString() === 'written by alice\n', 'made.txt came as written');
  const downloadRow = (name) => page.locator('.download-row', { hasText: name });
  await downloadRow('made.txt').locator('.upload-status', { hasText: 'Downloaded' }).waitFor({ timeout: 30000 });
  let savedFlagged = false;
  page.on('download', () => { savedFlagged = true; });
  await page.getByRole('button', { name: 'Download eicar.txt' }).click();
  const flagged = downloadRow('eicar.txt').locator('.upload-status', { hasText: 'Eicar-Test-Signature' });
  await flagged.waitFor({ timeout: 120000 });
  check((await flagged.textContent()).includes('not downloaded'), `eicar.txt: ${await flagged.textContent()}`);
  await sleep(1000);
  check(!savedFlagged, 'the browser saved nothing of the flagged file');
  await shot(page, 'downloads-01-done.png');
  console.log(JSON.stringify({ done: true, report_sha256: reportSha }));
}

main().then(() => process.exit(0), (e) => {
  console.error(`file_transfer: ${e.stack || e}`);
  process.exit(1);
});
