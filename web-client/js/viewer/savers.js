// Where a downloaded file's bytes go as they arrive (viewer/downloads.js asks a saver for a
// sink per file):
//
// - streamSaver: into the browser's own download through Atrium's service worker (web-client/
//   sw.js): written to disk as it comes, so memory stays small whatever the file's size. The
//   browser names the file only when the sink closes (the proxy said it is whole and passed);
//   an aborted sink is a cancelled download whose partial file the browser deletes. Needs a
//   secure context (https, or http on localhost) and a browser with service workers.
// - blobSaver: gathered into a Blob, given to the page when whole (the panel then saves it).
//   The browser keeps a Blob in memory, and Chromium cannot save one of more than a few hundred
//   MiB, so it takes files up to BLOB_LIMIT only, where the service worker is not there.
//
//   const saver = bestSaver();        // the Blob saver until the service worker is ready
//   const saver = await streamSaver() || blobSaver;
//   saver.limit                       // the largest file it takes, in bytes
//   const sink = saver.open({ name, size });
//   await sink.write(uint8array);     // resolves once there is room for more (backpressure)
//   const blob = await sink.close();  // the Blob (blobSaver) or null (the browser has the file)
//   sink.abort(reason);

export const BLOB_LIMIT = 256 << 20;
// Chunks gathered before they are merged into the Blob.
const MERGE_BYTES = 16 << 20;
// Chunks the stream holds before write() waits (each at most MAX_FILE_CHUNK, 256 KiB).
const QUEUED_CHUNKS = 8;

export const blobSaver = {
  limit: BLOB_LIMIT,
  open() {
    let blob = new Blob([]);
    let parts = [];
    let bytes = 0;
    const merge = () => {
      if (parts.length === 0) return;
      blob = new Blob([blob, ...parts]);
      parts = [];
      bytes = 0;
    };
    return {
      write(chunk) {
        parts.push(chunk);
        bytes += chunk.length;
        if (bytes >= MERGE_BYTES) merge();
        return Promise.resolve();
      },
      close() {
        merge();
        const whole = blob;
        blob = null;
        return Promise.resolve(whole);
      },
      abort() {
        blob = null;
        parts = [];
      },
    };
  },
};

function token() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

// The stream saver once Atrium's service worker is active, else null (no service workers, not
// a secure context, or it failed to start: the Blob saver is used then).
export async function streamSaver({ script = new URL('../../sw.js', import.meta.url) } = {}) {
  if (typeof navigator === 'undefined' || !navigator.serviceWorker || !globalThis.isSecureContext) return null;
  let reg;
  try {
    reg = await navigator.serviceWorker.register(script, { scope: new URL('dl/', script).href });
    if (!reg.active) await new Promise((resolve, reject) => {
      const w = reg.installing || reg.waiting;
      if (!w) return reject(new Error('no service worker'));
      w.addEventListener('statechange', () => {
        if (w.state === 'activated') resolve(w);
        else if (w.state === 'redundant') reject(new Error('the service worker was replaced'));
      });
    });
  } catch (e) {
    console.warn('downloads will be kept in memory: the service worker did not start:', e.message || e);
    return null;
  }
  const base = new URL('dl/', script);
  return {
    limit: Number.MAX_SAFE_INTEGER,
    open({ name, size }) {
      const t = token();
      const stream = new TransformStream({}, new CountQueuingStrategy({ highWaterMark: QUEUED_CHUNKS }));
      // The worker active now: one updated since the page loaded has replaced the first.
      const worker = reg.active;
      if (!worker) throw new Error('the service worker is gone');
      worker.postMessage({ token: t, name, size, readable: stream.readable }, [stream.readable]);
      // The browser's download starts with the frame's request; the frame stays until the file
      // is done (removing it can stop the download).
      const frame = document.createElement('iframe');
      frame.hidden = true;
      frame.src = new URL(t, base).href;
      document.body.append(frame);
      const writer = stream.writable.getWriter();
      const done = () => setTimeout(() => frame.remove(), 60_000);
      return {
        // Resolves once the stream has room: up to QUEUED_CHUNKS wait in it, no more.
        async write(chunk) {
          await writer.ready;
          writer.write(chunk).catch(() => {});
        },
        async close() {
          await writer.close();
          done();
          return null;
        },
        abort(reason) {
          writer.abort(reason).catch(() => {});
          done();
        },
      };
    },
  };
}

// A saver that is the Blob saver until the service worker is active, then the stream saver.
// Started once per page.
let best = null;
export function bestSaver() {
  if (best) return best;
  best = { limit: blobSaver.limit, open: blobSaver.open };
  streamSaver().then((s) => {
    if (s) Object.assign(best, { limit: s.limit, open: s.open });
  });
  return best;
}
