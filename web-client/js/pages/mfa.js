// The second factor: asked after sign-in (when policy requires it, or the user set it up) and
// before connecting to a pool that requires it; set up from the user's Security page. A code
// from an authenticator app, or one of the recovery codes shown once at set-up.

import { get, post, ApiError } from '../api.js';
import { el, render, announce } from '../ui.js';

// A 401 that is not a wrong code: the sign-in has ended (it owed its second factor for longer
// than the broker allows, or was signed out). Back to the sign-in page, told why.
function signInEnded(app, e) {
  if (!(e instanceof ApiError && e.status === 401 && e.field !== 'code')) return false;
  app.sessionEnded();
  return true;
}

// Where to go once the code is accepted (set by whoever sent the user here).
let after = '#/desktops';
export function mfaThen(hash) {
  after = hash;
}

export async function showMfa(app) {
  const status = await get('/api/v1/auth/mfa');
  if (status.session === 'verified') {
    app.go(after);
    return;
  }
  if (!status.enrolled) {
    await showEnrol(app, true);
    return;
  }
  const error = el('p', { id: 'mfa-error', class: 'error-text', role: 'alert' });
  const code = el('input', { id: 'mfa-code', name: 'code', autocomplete: 'one-time-code', inputmode: 'text', required: true, spellcheck: 'false' });
  const button = el('button', { type: 'submit' }, 'Verify');
  const form = el('form', { class: 'stack', 'aria-describedby': 'mfa-error' },
    el('label', { for: 'mfa-code' }, 'Code from your authenticator app (or a recovery code)', code), error,
    el('div', { class: 'actions' }, button));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    error.textContent = '';
    button.disabled = true;
    try {
      await post('/api/v1/auth/mfa/verify', { code: code.value.trim() });
      await app.refreshMe();
      announce('Verified.');
      const to = after;
      after = '#/desktops';
      app.go(to);
    } catch (e) {
      if (signInEnded(app, e)) return;
      code.value = '';
      error.textContent = e instanceof ApiError && e.status === 429
        ? `Too many wrong codes. ${e.message.replace(/^too many failed sign-ins: /, '').replace(/^./, (c) => c.toUpperCase())}.`
        : (e instanceof ApiError && e.status === 401 ? 'That code is wrong or was used already. Wait for the next one.' : e.message);
      code.focus();
    } finally {
      button.disabled = false;
    }
  });
  render(el('section', { class: 'signin card', 'aria-labelledby': 'mfa-title' },
    el('h1', { id: 'mfa-title', text: 'Two-step verification' }),
    el('p', { text: 'Enter the 6-digit code your authenticator app shows for Atrium.' }), form));
  code.focus();
}

// Sets up an authenticator app: the QR code and the key as text, confirmed with one code; then
// the recovery codes, shown once.
export async function showEnrol(app, required = false) {
  const e = await post('/api/v1/auth/mfa/enrol');
  const error = el('p', { id: 'enrol-error', class: 'error-text', role: 'alert' });
  const code = el('input', { id: 'enrol-code', name: 'code', autocomplete: 'one-time-code', inputmode: 'numeric', required: true });
  const form = el('form', { class: 'stack', 'aria-describedby': 'enrol-error' },
    el('label', { for: 'enrol-code' }, 'Code the app shows now', code), error,
    el('div', { class: 'actions' }, el('button', { type: 'submit' }, 'Confirm')));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    error.textContent = '';
    try {
      const r = await post('/api/v1/auth/mfa/enrol/confirm', { code: code.value.trim() });
      await app.refreshMe();
      showRecoveryCodes(app, r.recovery_codes);
    } catch (err) {
      if (signInEnded(app, err)) return;
      code.value = '';
      error.textContent = err instanceof ApiError && err.status === 401
        ? 'That code is not right. Check the time on your phone and try the next code.'
        : err.message;
      code.focus();
    }
  });
  const qr = e.qr_svg
    ? el('img', { id: 'enrol-qr', alt: 'QR code of your Atrium key', width: 200, height: 200, src: `data:image/svg+xml;base64,${btoa(e.qr_svg)}` })
    : null;
  render(el('section', { class: 'card', 'aria-labelledby': 'enrol-title' },
    el('h1', { id: 'enrol-title', text: 'Set up two-step verification' }),
    el('p', { text: required
      ? 'Your organisation asks for a second step at sign-in. Scan this code with an authenticator app (FreeOTP, Google or Microsoft Authenticator, 1Password...).'
      : 'Scan this code with an authenticator app (FreeOTP, Google or Microsoft Authenticator, 1Password...).' }),
    qr,
    el('p', {}, 'Or type this key: ', el('code', { id: 'enrol-secret', text: e.secret.replace(/(.{4})/g, '$1 ').trim() })),
    form));
  code.focus();
}

function showRecoveryCodes(app, codes) {
  const done = el('button', { type: 'button', onclick: () => app.go(after) }, 'I have saved these codes');
  render(el('section', { class: 'card', 'aria-labelledby': 'codes-title' },
    el('h1', { id: 'codes-title', text: 'Your recovery codes' }),
    el('p', { text: 'If you lose your phone, each of these codes signs you in once. Keep them somewhere safe: they are not shown again.' }),
    el('ul', { id: 'recovery-codes', class: 'codes' }, codes.map((c) => el('li', {}, el('code', { text: c })))),
    el('div', { class: 'actions' }, done)));
  done.focus();
}

// The user's Security page: whether a second factor is set up, and setting one up (again).
export async function showSecurity(app) {
  const status = await get('/api/v1/auth/mfa');
  const setUp = el('button', { type: 'button', onclick: () => {
    mfaThen('#/security');
    showEnrol(app).catch((e) => announce(e.message, true));
  } }, status.enrolled ? 'Set up a new authenticator app' : 'Set up two-step verification');
  render(el('h1', { text: 'Security' }),
    el('p', { id: 'mfa-state', text: status.enrolled
      ? `Two-step verification is on (${status.recovery_codes_left} recovery code${status.recovery_codes_left === 1 ? '' : 's'} left).`
      : 'Two-step verification is off.' }),
    el('div', { class: 'actions' }, setUp));
}
