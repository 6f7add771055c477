// Admin: API tokens for automation. A new token is shown once; tokens are listed (never their
// secrets) and revoked here. Every use of a token is in the audit log under "token:<name>".

import { get, post, del, ApiError } from '../api.js';
import { el, render, announce, fmtTime } from '../ui.js';

export async function showTokens(app, created = null) {
  const tokens = await get('/api/v1/admin/tokens');
  const now = Date.now();
  const name = el('input', { id: 't-name', name: 'name', required: true, autocomplete: 'off', spellcheck: 'false' });
  const scope = el('select', { id: 't-scope', name: 'scope' },
    el('option', { value: 'read' }, 'Read only (GET)'), el('option', { value: 'admin' }, 'Administration'));
  const days = el('input', { id: 't-days', name: 'days', type: 'number', min: 1, max: 366, value: 90, required: true });
  const error = el('p', { class: 'error-text', role: 'alert' });
  const form = el('form', { class: 'filters', 'aria-label': 'New API token' },
    el('label', { for: 't-name' }, 'Name', name),
    el('label', { for: 't-scope' }, 'Scope', scope),
    el('label', { for: 't-days' }, 'Expires in (days)', days),
    el('div', { class: 'actions' }, el('button', { type: 'submit' }, 'Create token')), error);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    error.textContent = '';
    try {
      const t = await post('/api/v1/admin/tokens', { name: name.value.trim(), scope: scope.value, expires_in_days: Number(days.value) });
      await showTokens(app, t);
    } catch (e) {
      error.textContent = e instanceof ApiError && e.field ? `${e.field}: ${e.message}` : e.message;
    }
  });
  const state = (t) => (t.revoked_at ? `revoked ${fmtTime(t.revoked_at)}` : t.expires_at <= now ? 'expired' : 'active');
  const rows = tokens.map((t) => el('tr', {},
    el('th', { scope: 'row', text: t.name }),
    el('td', { text: t.scope === 'admin' ? 'administration' : 'read only' }),
    el('td', { text: t.created_by }),
    el('td', { text: fmtTime(t.expires_at) }),
    el('td', { text: t.last_used_at ? fmtTime(t.last_used_at) : 'never' }),
    el('td', { text: state(t) }),
    el('td', {}, state(t) === 'active' ? revokeButton(t, () => showTokens(app)) : '')));
  const shown = created && el('div', { class: 'card', role: 'status' },
    el('p', { text: `Token ${created.name} created. Copy it now: it is not shown again.` }),
    el('pre', { id: 'new-token', text: created.token }),
    el('p', { text: 'Send it as: Authorization: Bearer <token>' }));
  render(el('h1', { text: 'API tokens' }), shown, form,
    el('div', { class: 'table-wrap' }, el('table', { 'aria-label': 'API tokens' },
      el('thead', {}, el('tr', {}, ['Name', 'Scope', 'Created by', 'Expires', 'Last used', 'State', ''].map((c) => el('th', { scope: 'col', text: c })))),
      el('tbody', {}, rows.length ? rows : el('tr', {}, el('td', { colspan: 7, text: 'No tokens.' }))))));
}

// "Revoke" for token `t` (asks first); `then` redraws the page.
export function revokeButton(t, then) {
  return el('button', { type: 'button', class: 'danger', 'aria-label': `Revoke ${t.name}`, onclick: async () => {
    if (!window.confirm(`Revoke the token ${t.name}? Automation using it stops at once.`)) return;
    try {
      await del(`/api/v1/admin/tokens/${encodeURIComponent(t.id)}`);
      announce(`Token ${t.name} revoked.`);
      await then();
    } catch (e) {
      announce(e.message, true);
    }
  } }, 'Revoke');
}
