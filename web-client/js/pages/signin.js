// The sign-in page: directory username and password.

import { post, ApiError } from '../api.js';
import { el, render, announce } from '../ui.js';

export function showSignIn(app) {
  if (app.me) {
    app.go('#/desktops');
    return;
  }
  const error = el('p', { id: 'signin-error', class: 'error-text', role: 'alert' });
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
      app.go('#/desktops');
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
  render(el('section', { class: 'signin card', 'aria-labelledby': 'signin-title' },
    el('h1', { id: 'signin-title', text: 'Sign in to Atrium' }),
    el('p', { text: 'Use your company directory account.' }),
    form));
  user.focus();
}
