// The desktop viewer page: connects to a pool's desktop (or, for administrators, joins a session
// view-only), draws it, carries keyboard, pointer and clipboard, gives the desktop the size of
// the window (or one the user chose, remembered), plays its sound (mute and volume
// remembered), warns before the session's time limits, says why a session ended, and
// reconnects with backoff.

import { get, post, ApiError } from '../api.js';
import { mfaThen } from './mfa.js';
import { el, render, announce } from '../ui.js';
import { DisplaySession } from '../viewer/session.js';
import { Caps } from '../viewer/protocol.js';
import { SoundPlayer } from '../viewer/audio.js';
import { currentLayout } from '../layout.js';
import { LimitWarnings } from './limits.js';
import { DownloadPanel } from './downloads.js';
import { UploadPanel } from './uploads.js';
import { ClipboardPanel } from './clipboard.js';

// A lost connection is tried again at once (another gateway takes it), then less and less often.
const FIRST_RETRY_MS = 250;
// A display service that went away (restarted, its node rebooted) is tried again at least this
// often, so the viewer is back within seconds of it; the broker itself, when it cannot be
// reached, at least every 15 s.
const MAX_DISPLAY_BACKOFF_MS = 4_000;
const MAX_BACKOFF_MS = 15_000;
// Fixed desktop sizes a user may choose instead of the window's (those the pool allows).
const SIZES = [[1024, 768], [1280, 720], [1280, 800], [1360, 768], [1440, 900], [1600, 900],
  [1920, 1080], [1920, 1200], [2560, 1440], [3840, 2160]];
const SIZE_KEY = 'atrium.desktopSize';
// The window's size is sent once it has stopped changing for this long (a drag sends one).
const RESIZE_SETTLE_MS = 150;

const SOUND_KEY = 'atrium.sound';
const VOLUME_KEY = 'atrium.volume';

function stored(key, fallback) {
  try {
    return localStorage.getItem(key) ?? fallback;
  } catch (e) {
    return fallback;
  }
}

function store(key, value) {
  try {
    localStorage.setItem(key, value);
  } catch (e) {
    // Private mode: the choice holds for this page only.
  }
}

// The stored volume, 0 to 1 (0.8 when none or not a number).
function storedVolume() {
  const v = Number(stored(VOLUME_KEY, '0.8'));
  return Number.isFinite(v) ? Math.max(0, Math.min(1, v)) : 0.8;
}

// A duration in words: `45 seconds`, `1 minute`, `30 minutes`, `2 hours`.
function spoken(secs) {
  const unit = (n, word) => `${n} ${word}${n === 1 ? '' : 's'}`;
  if (secs < 60) return unit(secs, 'second');
  if (secs < 7200 || secs % 3600 !== 0) return unit(Math.round(secs / 60), 'minute');
  return unit(secs / 3600, 'hour');
}

function fmtRate(bytesPerSecond) {
  const bits = bytesPerSecond * 8;
  if (bits >= 1e6) return `${(bits / 1e6).toFixed(1)} Mbit/s`;
  if (bits >= 1e3) return `${Math.round(bits / 1e3)} kbit/s`;
  return `${Math.round(bits)} bit/s`;
}

export function showViewer(app, target) {
  const shadowOf = target.startsWith('shadow:') ? target.slice('shadow:'.length) : null;
  const pool = shadowOf ? null : target;
  document.body.classList.add('viewing');

  const canvas = el('canvas', { id: 'screen', tabindex: '0', 'aria-label': shadowOf ? 'Shared desktop, view only' : `Desktop of pool ${pool}. Keyboard input goes to the desktop while this has focus.`, role: 'application', width: 1, height: 1 });
  const overlay = el('div', { class: 'viewer-overlay', role: 'status', 'aria-live': 'polite' }, 'Connecting…');
  const reconnectBtn = el('button', { type: 'button', id: 'reconnect', hidden: true }, 'Reconnect');
  const overlayText = el('p', {}, 'Connecting…');
  overlay.replaceChildren(overlayText, reconnectBtn);
  const warnings = new LimitWarnings({ onStillHere: () => { if (session) session.stillHere(); canvas.focus(); } });
  const screen = el('div', { class: 'viewer-screen fit' }, canvas, overlay, warnings.element);
  const stats = el('span', { class: 'viewer-stats', 'aria-live': 'off', title: 'Latency, frame rate and bandwidth' }, '');
  const clipboard = new ClipboardPanel();

  const btn = (label, onclick, extra = {}) => el('button', { type: 'button', onclick, ...extra }, label);
  const fitBtn = btn('Fit to window', () => toggleFit(), { 'aria-pressed': 'true' });
  const cadBtn = btn('Ctrl+Alt+Del', () => session && session.sendCtrlAltDel());
  const fullBtn = btn('Full screen', () => toggleFullscreen());
  const sizeSelect = el('select', { id: 'desktop-size' });
  const sizeLabel = el('label', { class: 'viewer-size', for: 'desktop-size', hidden: true }, 'Size ', sizeSelect);
  const soundBtn = btn('Sound', () => toggleSound(), { id: 'sound', 'aria-pressed': 'true', hidden: true });
  const volume = el('input', { id: 'volume', type: 'range', min: '0', max: '100', step: '5' });
  const volumeLabel = el('label', { class: 'viewer-size', for: 'volume', hidden: true }, 'Volume ', volume);
  // Said when the connection is recorded (policy), for as long as it is.
  const recorded = el('span', { class: 'viewer-recorded', id: 'recorded', role: 'note', hidden: true }, '● Recorded');
  // Said when the desktop's OS has no Atrium agent (an imported image): what that leaves out.
  const noAgent = el('span', { class: 'viewer-note', id: 'no-agent', role: 'note', hidden: true,
    title: 'Atrium cannot sign you in to this desktop or carry its clipboard and files' },
  'No Atrium agent: sign in to this desktop yourself; no clipboard or file transfer');
  const leaveBtn = btn(shadowOf ? 'Stop watching' : 'Disconnect', () => leave(true));
  const outBtn = btn('Sign out', () => { stop(); app.signOut(); });
  const uploads = new UploadPanel({ dropTarget: screen });
  const downloads = new DownloadPanel();
  const bar = el('div', { class: 'viewer-bar', role: 'toolbar', 'aria-label': 'Desktop controls' },
    btn('← My desktops', () => leave(false)), leaveBtn, cadBtn, fitBtn, sizeLabel, soundBtn, volumeLabel, clipboard.button, uploads.button, downloads.button, fullBtn, outBtn, recorded, noAgent, stats);
  const root = el('div', { class: 'viewer' }, el('h1', { class: 'visually-hidden', text: shadowOf ? 'Watching a session' : `Desktop: ${pool}` }), bar, clipboard.panel, uploads.panel, downloads.panel, screen);
  render(root);

  let session = null;
  let desktopId = null;
  let stopped = false;
  let userLeft = false;
  let backoff = FIRST_RETRY_MS;
  let timer = null;
  // The session's time limits, from the broker's last connect answer.
  let limits = null;
  // The desktop's OS has no Atrium agent (the broker's last connect answer says so).
  let agentless = false;
  // The largest size the desktop takes, once it said this viewer may choose one.
  let maxSize = null;
  let settle = null;
  let asked = '';
  // The desktop's sound, while this viewer may have it.
  let player = null;
  let soundOn = stored(SOUND_KEY, 'on') !== 'off';
  volume.value = String(Math.round(storedVolume() * 100));

  function setOverlay(text, offerReconnect = false) {
    overlay.hidden = !text;
    overlayText.textContent = text || '';
    reconnectBtn.hidden = !offerReconnect;
    if (offerReconnect) reconnectBtn.focus();
  }

  reconnectBtn.addEventListener('click', () => {
    if (stopped || timer) return;
    backoff = FIRST_RETRY_MS;
    attempt();
  });

  // What the user is told when the broker ended the session (`the session ended: <why>`), and
  // whether their desktop waits for them; null: the sign-in itself may have ended.
  function endedBecause(why) {
    const kept = limits && limits.disconnect_timeout_secs > 0
      ? ` Your desktop is kept for you for ${spoken(limits.disconnect_timeout_secs)}.` : '';
    switch (why) {
      case 'idle':
        return [`You were disconnected after ${limits ? spoken(limits.idle_timeout_secs) : 'a while'} without keyboard or mouse input.${kept}`, true];
      case 'disconnected':
        return [`This session was disconnected.${kept}`, true];
      case 'max_length':
        return ['This session reached its time limit and was ended.', true];
      case 'administrator':
        return ['An administrator ended this session.', true];
      default:
        return null;
    }
  }

  function toggleFit() {
    const fit = !screen.classList.contains('fit');
    screen.classList.toggle('fit', fit);
    fitBtn.setAttribute('aria-pressed', String(fit));
    fitBtn.textContent = fit ? 'Fit to window' : 'Actual size';
  }

  async function toggleFullscreen() {
    try {
      if (document.fullscreenElement) {
        await document.exitFullscreen();
      } else {
        await root.requestFullscreen();
        // Keys the browser keeps (Escape, Ctrl+W...) reach the desktop where the browser allows.
        if (navigator.keyboard && navigator.keyboard.lock) navigator.keyboard.lock().catch(() => {});
      }
    } catch (e) {
      announce('Full screen is not available here.', true);
    }
    canvas.focus();
  }

  // The sizes this desktop takes, and the user's choice (the window's size unless they chose).
  function fillSizes() {
    const opts = [el('option', { value: 'window' }, 'Match window')];
    const fits = SIZES.filter(([w, h]) => w <= maxSize.width && h <= maxSize.height);
    if (!fits.some(([w, h]) => w === maxSize.width && h === maxSize.height)) fits.push([maxSize.width, maxSize.height]);
    for (const [w, h] of fits) opts.push(el('option', { value: `${w}x${h}` }, `${w} × ${h}`));
    sizeSelect.replaceChildren(...opts);
    const choice = stored(SIZE_KEY, 'window');
    sizeSelect.value = opts.some((o) => o.value === choice) ? choice : 'window';
  }

  function applySize() {
    settle = null;
    if (!session || !maxSize) return;
    let want;
    if (sizeSelect.value === 'window') {
      want = [screen.clientWidth, screen.clientHeight];
    } else {
      want = sizeSelect.value.split('x').map(Number);
    }
    if (!(want[0] > 0 && want[1] > 0) || `${want[0]}x${want[1]}` === asked) return;
    if (session.requestSize(want[0], want[1])) asked = `${want[0]}x${want[1]}`;
  }

  function scheduleSize() {
    if (settle) clearTimeout(settle);
    settle = setTimeout(applySize, RESIZE_SETTLE_MS);
  }

  function showSound() {
    soundBtn.setAttribute('aria-pressed', String(soundOn));
    soundBtn.textContent = soundOn ? 'Sound on' : 'Muted';
    soundBtn.title = soundOn ? 'Mute the desktop' : 'Play the desktop\'s sound';
  }

  function toggleSound() {
    soundOn = !soundOn;
    store(SOUND_KEY, soundOn ? 'on' : 'off');
    showSound();
    if (player) player.resume();
    // Muted, the proxy sends nothing: no bandwidth for sound nobody hears.
    if (session) session.setAudio(soundOn);
    canvas.focus();
  }

  volume.addEventListener('input', () => {
    const v = Number(volume.value) / 100;
    store(VOLUME_KEY, String(v));
    if (player) player.setVolume(v);
  });
  clipboard.watchGestures(canvas);
  // Browsers keep a page silent until a gesture: the first key or click in the desktop does.
  const wake = () => { if (player) player.resume(); };
  canvas.addEventListener('pointerdown', wake);
  canvas.addEventListener('keydown', wake);

  function stopSound() {
    if (player) player.close();
    player = null;
    soundBtn.hidden = true;
    volumeLabel.hidden = true;
  }

  sizeSelect.addEventListener('change', () => {
    store(SIZE_KEY, sizeSelect.value);
    applySize();
    canvas.focus();
  });
  // The window (or full screen) changed the space the desktop has.
  const observer = new ResizeObserver(() => {
    if (maxSize && sizeSelect.value === 'window') scheduleSize();
  });
  observer.observe(screen);


  async function ticket() {
    if (shadowOf) {
      const r = await post(`/api/v1/admin/sessions/${encodeURIComponent(shadowOf)}/shadow`);
      return { ready: true, url: `${r.ws_url}?ticket=${encodeURIComponent(r.ticket)}` };
    }
    const r = await post(`/api/v1/pools/${encodeURIComponent(pool)}/connect`, { keyboard_layout: currentLayout() });
    desktopId = r.desktop_id;
    limits = r.limits || null;
    agentless = r.agent === false;
    if (r.status !== 'ready') return { ready: false, retry: r.retry_after_ms || 1000, source: r.source };
    return { ready: true, url: `${r.ws_url}?ticket=${encodeURIComponent(r.ticket)}` };
  }

  async function attempt() {
    timer = null;
    if (stopped) return;
    let t;
    try {
      t = await ticket();
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) {
        stop();
        app.sessionEnded();
        return;
      }
      // The pool asks for the second factor: pass it, then come back here.
      if (e instanceof ApiError && e.status === 403 && e.field === 'mfa') {
        stop();
        mfaThen(location.hash);
        app.go('#/mfa');
        return;
      }
      if (e instanceof ApiError && (e.status === 403 || e.status === 404)) {
        setOverlay(e.message);
        return;
      }
      scheduleRetry(e.message, MAX_BACKOFF_MS);
      return;
    }
    if (stopped) return;
    if (!t.ready) {
      setOverlay('Starting your desktop…');
      timer = setTimeout(attempt, Math.min(t.retry, 5000));
      return;
    }
    open(t.url);
  }

  function scheduleRetry(why, max) {
    backoff = Math.min(backoff, max);
    const secs = Math.round(backoff / 1000);
    setOverlay(`${why ? `${why} ` : ''}${secs >= 1 ? `Reconnecting in ${secs} s…` : 'Reconnecting…'}`);
    timer = setTimeout(attempt, backoff);
    backoff = Math.min(backoff * 2, max);
  }

  function open(url) {
    setOverlay('Connecting…');
    session = new DisplaySession({ url, canvas });
    uploads.attach(session);
    downloads.attach(session);
    clipboard.attach(session);
    maxSize = null;
    asked = '';
    sizeLabel.hidden = true;
    let reached = false;
    session.on('connected', (h) => {
      reached = true;
      backoff = FIRST_RETRY_MS;
      setOverlay('');
      cadBtn.disabled = h.viewOnly;
      clipboard.allow(h.clipboardIn, h.clipboardOut);
      uploads.allow(h.fileUpload);
      downloads.allow(h.fileDownload);
      stopSound();
      if (h.audio && SoundPlayer.supported()) {
        player = new SoundPlayer();
        player.setVolume(Number(volume.value) / 100);
        player.resume();
        soundBtn.hidden = false;
        volumeLabel.hidden = false;
        showSound();
        session.setAudio(soundOn);
      }
      const rec = (h.caps & Caps.RECORDED) !== 0;
      const keys = (h.caps & Caps.RECORDED_INPUT) !== 0;
      recorded.hidden = !rec;
      recorded.title = keys ? 'This session is recorded, with what you type' : 'This session is recorded';
      if (!shadowOf && !h.viewOnly) warnings.start(limits, () => (session ? session.lastInputAt : 0));
      noAgent.hidden = !agentless;
      let said = h.viewOnly ? 'Connected, view only.' : 'Connected to your desktop.';
      if (rec) said += ` This session is recorded${keys ? ', including what you type' : ''}.`;
      if (agentless) said += ' Sign in to its operating system yourself: it has no Atrium agent, so the clipboard and file transfer are not available.';
      announce(said);
      canvas.focus();
    });
    session.on('resizable', ({ maxWidth, maxHeight }) => {
      maxSize = { width: maxWidth, height: maxHeight };
      sizeLabel.hidden = false;
      fillSizes();
      applySize();
    });
    session.on('audio', ({ at, packet }) => {
      if (player && soundOn) player.push(at, packet);
    });
    session.on('stats', (s) => {
      const parts = [];
      if (s.latencyMs != null) parts.push(`${Math.round(s.latencyMs)} ms`);
      parts.push(`${Math.round(s.fps || 0)} fps`);
      parts.push(fmtRate(s.bytesPerSecond || 0));
      if (s.videoFps > 0) parts.push(`video ${s.videoFps} fps`);
      stats.textContent = parts.join(' · ');
      // Pictures of moving areas drawn so far (VP8 video), for whoever inspects the page.
      canvas.dataset.videoFrames = String(s.videoFrames || 0);
    });
    session.on('disconnected', (e) => {
      session = null;
      stopSound();
      warnings.stop();
      stats.textContent = '';
      if (stopped || userLeft) return;
      const ended = e && typeof e.reason === 'string' && e.reason.startsWith('the session ended');
      const because = ended ? endedBecause(e.reason.split(': ')[1]) : null;
      if (because) {
        setOverlay(...because);
        announce(because[0]);
        return;
      }
      if (ended) {
        setOverlay('This session was ended.');
        // The sign-in itself ended (signed out elsewhere, by an administrator, or the
        // directory no longer lets them in): the sign-in page says so.
        get('/api/v1/me').catch((err) => {
          if (!(err instanceof ApiError && err.status === 401) || userLeft || stopped) return;
          stop();
          app.sessionEnded();
        });
        return;
      }
      // The broker answered (a ticket came); the display service did not, or went away.
      scheduleRetry(reached ? 'The connection to your desktop was lost.'
        : 'The desktop\'s display service is not answering.', MAX_DISPLAY_BACKOFF_MS);
    });
    session.connect();
  }

  function stop() {
    stopped = true;
    if (timer) clearTimeout(timer);
    warnings.stop();
    if (settle) clearTimeout(settle);
    observer.disconnect();
    stopSound();
    if (session) session.disconnect();
    session = null;
    if (document.fullscreenElement) document.exitFullscreen().catch(() => {});
  }

  async function leave(disconnect) {
    userLeft = true;
    stop();
    if (disconnect && desktopId && !shadowOf) {
      try {
        await post(`/api/v1/desktops/${encodeURIComponent(desktopId)}/disconnect`);
      } catch (e) {
        // The session may have ended already.
      }
    }
    app.go(shadowOf ? '#/admin/sessions' : '#/desktops');
  }

  attempt();
  return stop;
}
