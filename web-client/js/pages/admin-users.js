// Admin: the users who have signed in, found by name; a user's sign-in and desktop sessions,
// the API tokens they created, "Sign out everywhere" (every sign-in ends, every viewer is
// disconnected) and "Reset two-step verification".

import { get, post, del } from '../api.js';
import { el, render, announce, fmtTime } from '../ui.js';
import { revokeButton } from './admin-tokens.js';

export async function showUsers(app, search = '') {
  const at = location.hash;
  const users = await get(`/api/v1/admin/users?search=${encodeURIComponent(search)}`);
  // The user went elsewhere meanwhile (an answer that comes late draws nothing).
  if (location.hash !== at) return;
  const box = el('input', { id: 'user-search', type: 'search', value: search, autocomplete: 'off', spellcheck: 'false' });
  const form = el('form', { class: 'actions', role: 'search' },
    el('label', { for: 'user-search' }, 'Username starts with', box),
    el('button', { type: 'submit', class: 'secondary' }, 'Find'));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    showUsers(app, box.value.trim()).catch((e) => announce(e.message, true));
  });
  const rows = users.map((u) => el('tr', {},
    el('th', { scope: 'row' }, el('a', { href: `#/admin/users/${encodeURIComponent(u.username)}` }, u.username)),
    el('td', { text: u.display_name || '' }),
    el('td', { text: u.groups.join(', ') }),
    el('td', { text: fmtTime(u.last_login_at) }),
    el('td', { text: String(u.active_sessions) })));
  render(el('h1', { text: 'Users' }), form,
    el('div', { class: 'table-wrap' }, el('table', { 'aria-label': 'Users' },
      el('thead', {}, el('tr', {}, ['User', 'Name', 'Groups', 'Last sign-in', 'Signed in'].map((c) => el('th', { scope: 'col', text: c })))),
      el('tbody', {}, rows.length ? rows : el('tr', {}, el('td', { colspan: 5, text: 'No user matches.' }))))));
}

export async function showUser(app, username) {
  const at = location.hash;
  const d = await get(`/api/v1/admin/users/${encodeURIComponent(username)}`);
  if (location.hash !== at) return;
  const u = d.user;
  const signOut = el('button', { type: 'button', class: 'danger', disabled: d.sessions.length === 0, onclick: async () => {
    if (!window.confirm(`Sign ${u.username} out everywhere? Every sign-in ends and every viewer is disconnected.`)) return;
    try {
      const r = await post(`/api/v1/admin/users/${encodeURIComponent(u.username)}/signout`);
      announce(`${u.username} is signed out everywhere (${r.sessions_ended} sign-in${r.sessions_ended === 1 ? '' : 's'} ended).`);
      await showUser(app, username);
    } catch (e) {
      announce(e.message, true);
    }
  } }, 'Sign out everywhere');
  const sessions = d.sessions.map((s) => el('tr', {},
    el('td', { text: fmtTime(s.created_at) }),
    el('td', { text: s.method === 'oidc' ? 'single sign-on' : 'password' }),
    el('td', { text: s.client_addr }),
    el('td', { text: fmtTime(s.last_seen_at) })));
  const tokens = d.tokens.map((t) => el('tr', {},
    el('th', { scope: 'row', text: t.name }),
    el('td', { text: t.scope === 'admin' ? 'administration' : 'read only' }),
    el('td', { text: fmtTime(t.expires_at) }),
    el('td', { text: t.last_used_at ? fmtTime(t.last_used_at) : 'never' }),
    el('td', {}, revokeButton(t, () => showUser(app, username)))));
  const desktops = d.desktop_sessions.map((s) => el('tr', {},
    el('td', { text: s.desktop_id }),
    el('td', { text: s.node_id || '' }),
    el('td', { text: fmtTime(s.started_at) }),
    el('td', { text: s.client_addr })));
  render(el('h1', { text: u.display_name ? `${u.display_name} (${u.username})` : u.username }),
    el('dl', { class: 'facts' },
      el('dt', { text: 'Groups' }), el('dd', { text: u.groups.join(', ') || 'none' }),
      el('dt', { text: 'E-mail' }), el('dd', { text: u.email || '' }),
      el('dt', { text: 'Directory checked' }), el('dd', { text: fmtTime(u.validated_at) }),
      el('dt', { text: 'Two-step verification' }), el('dd', { text: d.mfa_enrolled ? 'set up' : 'not set up' })),
    el('div', { class: 'actions' }, signOut, d.mfa_enrolled ? el('button', { type: 'button', class: 'secondary', onclick: async () => {
      if (!window.confirm(`Reset ${u.username}'s two-step verification? They set it up again at their next sign-in.`)) return;
      try {
        await del(`/api/v1/admin/users/${encodeURIComponent(u.username)}/mfa`);
        announce(`${u.username}'s two-step verification is reset.`);
        await showUser(app, username);
      } catch (e) {
        announce(e.message, true);
      }
    } }, 'Reset two-step verification') : null),
    el('h2', { text: 'Signed in' }),
    el('div', { class: 'table-wrap' }, el('table', { 'aria-label': 'Sign-in sessions' },
      el('thead', {}, el('tr', {}, ['Since', 'How', 'Client address', 'Last seen'].map((c) => el('th', { scope: 'col', text: c })))),
      el('tbody', {}, sessions.length ? sessions : el('tr', {}, el('td', { colspan: 4, text: 'Not signed in.' }))))),
    el('h2', { text: 'Desktop sessions' }),
    el('div', { class: 'table-wrap' }, el('table', { 'aria-label': 'Open desktop sessions' },
      el('thead', {}, el('tr', {}, ['Desktop', 'Node', 'Since', 'Client address'].map((c) => el('th', { scope: 'col', text: c })))),
      el('tbody', {}, desktops.length ? desktops : el('tr', {}, el('td', { colspan: 4, text: 'None open.' }))))),
    el('h2', { text: 'API tokens they created' }),
    el('div', { class: 'table-wrap' }, el('table', { 'aria-label': 'API tokens they created' },
      el('thead', {}, el('tr', {}, ['Name', 'Scope', 'Expires', 'Last used', ''].map((c) => el('th', { scope: 'col', text: c })))),
      el('tbody', {}, tokens.length ? tokens : el('tr', {}, el('td', { colspan: 5, text: 'None in force.' }))))));
}
