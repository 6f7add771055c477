// Admin: session recordings (policy action `review_recordings`): the list, searchable by user
// and time, and a player with play/pause, speed, a timeline to seek, the keys typed when they
// were recorded, and whether the recording is intact. Opening a recording is audited.

import { ApiError, get } from '../api.js';
import { RecordingPlayer } from '../recording/player.js';
import { el, render, announce, fmtTime } from '../ui.js';

// Recordings up to this size are checked whole when they are opened.
const CHECK_AT_ONCE_BYTES = 256 << 20;

export function fmtLength(ms) {
  const s = Math.floor(ms / 1000);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const pad = (n) => String(n).padStart(2, '0');
  return h ? `${h}:${pad(m)}:${pad(s % 60)}` : `${m}:${pad(s % 60)}`;
}

export function fmtSize(bytes) {
  if (bytes >= 1 << 30) return `${(bytes / (1 << 30)).toFixed(1)} GiB`;
  if (bytes >= 1 << 20) return `${(bytes / (1 << 20)).toFixed(1)} MiB`;
  return `${Math.max(1, Math.round(bytes / 1024))} KiB`;
}

export async function showRecordings(app, filters = {}) {
  const q = new URLSearchParams();
  if (filters.user) q.set('user', filters.user);
  if (filters.since) q.set('since', String(new Date(filters.since).getTime()));
  if (filters.until) q.set('until', String(new Date(filters.until).getTime()));
  const list = await get(`/api/v1/admin/recordings?${q}`);
  const user = el('input', { id: 'r-user', name: 'user', value: filters.user || '' });
  const since = el('input', { id: 'r-since', name: 'since', type: 'datetime-local', value: filters.since || '' });
  const until = el('input', { id: 'r-until', name: 'until', type: 'datetime-local', value: filters.until || '' });
  const form = el('form', { class: 'filters', 'aria-label': 'Search recordings' },
    el('label', { for: 'r-user' }, 'User', user),
    el('label', { for: 'r-since' }, 'Started from', since),
    el('label', { for: 'r-until' }, 'Until', until),
    el('button', { type: 'submit', text: 'Search' }));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    showRecordings(app, { user: user.value.trim(), since: since.value, until: until.value });
  });
  const rows = list.map((r) => el('tr', {},
    el('th', { scope: 'row', text: r.username }),
    el('td', { text: r.pool }),
    el('td', { text: fmtTime(r.started_at) }),
    el('td', { text: fmtLength(r.duration_ms) }),
    el('td', { text: fmtSize(r.bytes) }),
    el('td', { text: r.state + (r.input ? ', with keys' : '') }),
    el('td', {}, el('a', { class: 'button secondary', href: `#/admin/recordings/${encodeURIComponent(r.id)}`,
      'aria-label': `Play ${r.username}'s recording of ${fmtTime(r.started_at)}` }, 'Play'))));
  render(el('h1', { text: 'Recordings' }), form,
    el('p', { role: 'status', id: 'recordings-count', text: `${list.length} recording${list.length === 1 ? '' : 's'}` }),
    el('div', { class: 'table-wrap' }, el('table', { 'aria-label': 'Session recordings' },
      el('thead', {}, el('tr', {}, ['User', 'Pool', 'Started', 'Length', 'Size', 'State', ''].map((c) => el('th', { scope: 'col', text: c })))),
      el('tbody', {}, rows.length ? rows : el('tr', {}, el('td', { colspan: 7, text: 'No recordings match.' }))))));
}

// Fetches a chunk's bytes; a chunk that fails its check (409) says the recording was tampered
// with.
async function loadChunk(id, n) {
  const r = await fetch(`/api/v1/admin/recordings/${encodeURIComponent(id)}/chunks/${n}`, { credentials: 'same-origin' });
  if (!r.ok) {
    let msg = `${r.status} ${r.statusText}`;
    try { msg = (await r.json()).error || msg; } catch { /* not JSON */ }
    throw new ApiError(r.status, msg);
  }
  return r.arrayBuffer();
}

export async function showRecording(app, id) {
  const index = await get(`/api/v1/admin/recordings/${encodeURIComponent(id)}`);
  const rec = index.recording;
  const canvas = el('canvas', { id: 'recording-screen', width: 1, height: 1, 'aria-label': `${rec.username}'s screen` });
  const player = new RecordingPlayer({ canvas, index, load: (n) => loadChunk(id, n) });
  const integrity = el('p', { id: 'recording-integrity', role: 'status', text: 'Checking that the recording is intact…' });
  const playBtn = el('button', { type: 'button', id: 'recording-play' }, 'Play');
  const speed = el('select', { id: 'recording-speed', 'aria-label': 'Speed' },
    [1, 2, 4, 8, 16].map((s) => el('option', { value: s, text: `${s}×` })));
  const timeline = el('input', { id: 'recording-timeline', type: 'range', min: 0, max: Math.max(1, rec.duration_ms), step: 100, value: 0, 'aria-label': 'Position' });
  const clock = el('span', { id: 'recording-clock', text: `0:00 / ${fmtLength(rec.duration_ms)}` });
  const keys = el('pre', { id: 'recording-keys', class: 'recording-keys', 'aria-label': 'Keys typed' });
  let scrubbing = false;
  player.on('time', ({ t }) => {
    if (!scrubbing) timeline.value = String(Math.round(t));
    clock.textContent = `${fmtLength(t)} / ${fmtLength(rec.duration_ms)}`;
    canvas.dataset.position = String(Math.round(t));
  });
  player.on('state', ({ playing }) => { playBtn.textContent = playing ? 'Pause' : 'Play'; });
  player.on('input', ({ text }) => {
    keys.textContent = (keys.textContent + text).slice(-2000);
  });
  player.on('error', (e) => announce(e.message || String(e), true));
  // The canvas says when the last seek asked for is drawn (a seek a later one took over says
  // nothing).
  let seeks = 0;
  const seek = async (t) => {
    const mine = ++seeks;
    keys.textContent = '';
    canvas.dataset.seeked = '';
    try {
      await player.seek(t);
      if (mine === seeks) canvas.dataset.seeked = String(Math.round(player.t));
    } catch (e) {
      if (mine === seeks) announce(e.message || String(e), true);
    }
  };
  playBtn.addEventListener('click', () => (player.playing ? player.pause() : player.play()));
  speed.addEventListener('change', () => player.setSpeed(Number(speed.value)));
  timeline.addEventListener('input', () => { scrubbing = true; });
  timeline.addEventListener('change', () => { scrubbing = false; seek(Number(timeline.value)); });
  render(
    el('h1', { text: `Recording of ${rec.username}` }),
    el('p', {}, `Pool ${rec.pool} · started ${fmtTime(rec.started_at)} · ${fmtLength(rec.duration_ms)} · ${fmtSize(rec.bytes)} · ${rec.state}`,
      rec.input ? ' · keys recorded' : ''),
    integrity,
    el('div', { class: 'actions recording-controls' }, playBtn, el('label', { for: 'recording-speed' }, 'Speed ', speed), timeline, clock),
    el('div', { class: 'recording-screen' }, canvas),
    rec.input ? el('section', {}, el('h2', { text: 'Keys typed' }), keys) : null,
    el('p', {}, el('a', { href: '#/admin/recordings' }, 'All recordings')));
  const check = () => {
    integrity.textContent = 'Checking that the recording is intact…';
    get(`/api/v1/admin/recordings/${encodeURIComponent(id)}/verify`).then((v) => {
      integrity.textContent = v.intact
        ? `Intact: all ${v.chunks_checked} chunks are as they were recorded.`
        : `Tampered with: ${v.problem}`;
      integrity.classList.toggle('error', !v.intact);
      integrity.dataset.intact = String(v.intact);
    }, (e) => { integrity.textContent = `The recording could not be checked: ${e.message}`; });
  };
  if (index.chunks.length === 0) {
    integrity.textContent = 'This recording holds nothing: the viewer never connected, or left at once.';
    playBtn.disabled = true;
    timeline.disabled = true;
    return () => player.close();
  }
  // The whole chain is read to check it: at once for a recording of ordinary size; a large one
  // on request (each chunk is checked anyway as it is played).
  if (rec.bytes <= CHECK_AT_ONCE_BYTES) {
    check();
  } else {
    integrity.replaceChildren('Each chunk is checked as it is played. ',
      el('button', { type: 'button', class: 'secondary', id: 'recording-check', onclick: check }, 'Check the whole recording'));
  }
  await seek(0);
  return () => player.close();
}
