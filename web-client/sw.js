// Atrium's service worker: a file downloaded from the desktop goes to the browser's own
// download as it arrives, so a file of any size is written to disk, never gathered in memory
// (web-client/js/viewer/savers.js). Its scope is `dl/` beside this file: it answers
// `dl/<token>` once, with the stream the page handed it for that token, and nothing else.
//
// The page posts { token, name, size, readable } (the readable side of a stream it writes the
// file's bytes into, transferred) and then opens `dl/<token>` in a hidden frame. The browser
// names the file only when the page closes the stream, after the proxy said the file is whole
// and passed its checks; a stream the page aborts (refused, cut off, cancelled) is a cancelled
// download, whose partial file the browser deletes.

const TOKEN = /\/dl\/([0-9a-f]{32})$/;
// A stream handed over but never asked for (the frame did not load) is dropped after this.
const UNCLAIMED_MS = 60_000;
const files = new Map(); // token -> { file } (posted first) or { claim } (asked first)

self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (e) => e.waitUntil(self.clients.claim()));

self.addEventListener('message', (e) => {
  const f = e.data;
  if (!f || typeof f.token !== 'string' || !/^[0-9a-f]{32}$/.test(f.token)) return;
  if (!(f.readable instanceof ReadableStream) || typeof f.name !== 'string' || !Number.isSafeInteger(f.size)) return;
  const waiting = files.get(f.token);
  if (waiting && waiting.claim) {
    files.delete(f.token);
    waiting.claim(f);
    return;
  }
  files.set(f.token, { file: f });
  setTimeout(() => {
    const left = files.get(f.token);
    if (left && left.file === f) {
      files.delete(f.token);
      f.readable.cancel('never asked for').catch(() => {});
    }
  }, UNCLAIMED_MS);
});

// The file for `token`, whichever of the page's message and the frame's request came first.
function claim(token) {
  const posted = files.get(token);
  if (posted && posted.file) {
    files.delete(token);
    return Promise.resolve(posted.file);
  }
  return new Promise((resolve) => {
    files.set(token, { claim: resolve });
    setTimeout(() => {
      if (files.get(token)?.claim === resolve) {
        files.delete(token);
        resolve(null);
      }
    }, 10_000);
  });
}

// `name` as an RFC 5987 value: percent-encoded UTF-8, with the characters that encodeURIComponent
// leaves but the header's syntax does not allow (' ( ) *) encoded too.
function extValue(name) {
  return encodeURIComponent(name).replace(/['()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

self.addEventListener('fetch', (e) => {
  const m = TOKEN.exec(new URL(e.request.url).pathname);
  if (!m) return;
  e.respondWith(claim(m[1]).then((f) => {
    if (!f) return new Response('not found', { status: 404 });
    // No ETag or Last-Modified: a download cut off is then never kept to be resumed.
    return new Response(f.readable, {
      headers: {
        'Content-Type': 'application/octet-stream',
        'Content-Disposition': `attachment; filename*=UTF-8''${extValue(f.name)}`,
        'Content-Length': String(f.size),
        'X-Content-Type-Options': 'nosniff',
      },
    });
  }));
});
