// The sign-in page: single sign-on through the company's identity provider and/or the
// directory username and password, as the broker offers them (GET /api/v1/auth/methods).
// A single sign-on that failed comes back here as #/signin/error/<code>; so does a page whose
// sign-in ended (`signedout`), and a sign-in that ended while it owed its second factor
// (`expired`).

import { get, post, ApiError } from '../api.js';
import { el, render, announce } from '../ui.js';

// What each code means for the user: those the broker sends back after a failed single
// sign-on, `signedout` and `expired`.
const SIGNIN_ERRORS = {
  provider: 'The identity provider is unavailable or gave an answer Atrium cannot use. Try again in a moment; if it keeps happening, tell your administrator.',
  denied: 'The sign-in was cancelled or refused at the identity provider.',
  state: 'That sign-in was not started in this browser, or it took too long. Start again.',
  code: 'That sign-in was already used or has expired. Start again.',
  token: "The identity provider's answer failed Atrium's security checks, so you were not signed in. Tell your administrator.",
  user: 'Your account at the identity provider cannot be used with Atrium (it is not in the company directory, or lacks a username). Tell your administrator.',
  directory: 'The company directory is unavailable right now. Try again in a moment.',
  locked: 'This account is locked after too many failed sign-ins. Try again later.',
  off: 'Single sign-on is not set up here.',
  internal: "Something went wrong on Atrium's side. Try again.",
  expired: 'Your sign-in ended before the second step was done. Sign in again.',
  signedout: 'Your sign-in has ended: it expired, you signed out elsewhere, or an administrator signed you out. Sign in again to go on.',
};

export async function showSignIn(app, errorCode) {
  if (app.me) {
    app.go('#/desktops');
    return;
  }
  let methods = { password: true, oidc: null };
  try {
    methods = await get('/api/v1/auth/methods');
  } catch (e) {
    // An older broker, or none reachable: the password form is the safe default.
  }
  const error = el('p', { id: 'signin-error', class: 'error-text', role: 'alert' });
  if (errorCode) error.textContent = SIGNIN_ERRORS[errorCode] || SIGNIN_ERRORS.internal;
  const parts = [el('h1', { id: 'signin-title', text: 'Sign in to Atrium' })];
  let first = null;
  if (methods.oidc) {
    const sso = el('a', { id: 'sso', class: 'button', href: methods.oidc.start_url },
      `Sign in with ${methods.oidc.display_name}`);
    parts.push(el('div', { class: 'actions' }, sso));
    first = sso;
  }
  if (methods.password) {
    const form = passwordForm(app, error);
    if (methods.oidc) parts.push(el('p', { class: 'or', text: 'Or use your company directory account:' }));
    else parts.push(el('p', { text: 'Use your company directory account.' }));
    parts.push(form);
    first = first || form.querySelector('input');
  } else {
    parts.push(error);
  }
  render(el('section', { class: 'signin card', 'aria-labelledby': 'signin-title' }, ...parts));
  if (first) first.focus();
}

function passwordForm(app, error) {
  const user = el('input', { id: 'username', name: 'username', autocomplete: 'username', required: true, autocapitalize: 'none', spellcheck: 'false' });
  const pass = el('input', { id: 'password', name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const button = el('button', { type: 'submit', text: 'Sign in' });
  const form = el('form', { class: 'stack', novalidate: true, 'aria-describedby': 'signin-error' },
    el('label', { for: 'username' }, 'Username', user),
    el('label', { for: 'password' }, 'Password', pass),
    error,
    el('div', { class: 'actions' }, button));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    error.textContent = '';
    if (!user.value.trim() || !pass.value) {
      error.textContent = 'Enter your username and password.';
      (user.value.trim() ? pass : user).focus();
      return;
    }
    button.disabled = true;
    button.textContent = 'Signing in…';
    try {
      await post('/api/v1/auth/login', { username: user.value.trim(), password: pass.value });
      pass.value = '';
      await app.refreshMe();
      announce(`Signed in as ${app.me.display_name || app.me.username}.`);
      app.go(app.me.mfa === 'pending' ? '#/mfa' : '#/desktops');
    } catch (e) {
      pass.value = '';
      if (e instanceof ApiError && e.status === 401) {
        error.textContent = 'The username or password is incorrect.';
      } else if (e instanceof ApiError && e.status === 429) {
        error.textContent = `Too many failed sign-ins. ${e.message.replace(/^too many failed sign-ins: /, '').replace(/^./, (c) => c.toUpperCase())}.`;
      } else if (e instanceof ApiError && e.status === 503) {
        error.textContent = 'The company directory is unavailable right now. Try again in a moment.';
      } else {
        error.textContent = e.message || 'Sign-in failed.';
      }
      pass.focus();
    } finally {
      button.disabled = false;
      button.textContent = 'Sign in';
    }
  });
  return form;
}
