// The page shell: who is signed in, navigation, and a hash router over the pages.

import { get, post, ApiError } from './api.js';
import { announce, clearStatus } from './ui.js';
import { showSignIn } from './pages/signin.js';
import { showDesktops } from './pages/desktops.js';
import { showViewer } from './pages/viewer.js';
import { showPools } from './pages/admin-pools.js';
import { showNodes } from './pages/admin-nodes.js';
import { showSessions } from './pages/admin-sessions.js';
import { showAudit } from './pages/admin-audit.js';
import { showUsers, showUser } from './pages/admin-users.js';
import { showTokens } from './pages/admin-tokens.js';
import { showImages } from './pages/admin-images.js';
import { showRecordings, showRecording } from './pages/admin-recordings.js';
import { showMfa, showSecurity, mfaThen } from './pages/mfa.js';

export const app = {
  me: null,
  async refreshMe() {
    try {
      this.me = await get('/api/v1/me');
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) this.me = null;
      else throw e;
    }
    this.paintShell();
    return this.me;
  },
  paintShell() {
    const signedIn = !!this.me;
    document.getElementById('nav').hidden = !signedIn;
    document.getElementById('user-box').hidden = !signedIn;
    document.getElementById('user-name').textContent = signedIn ? (this.me.display_name || this.me.username) : '';
    for (const li of document.querySelectorAll('.admin-only')) li.hidden = !(signedIn && this.me.is_admin);
  },
  go(hash) {
    if (location.hash === hash) route();
    else location.hash = hash;
  },
  // Forgets the sign-in and goes to the sign-in page, which says why when `code` names a
  // reason (see pages/signin.js).
  signedOut(code) {
    this.me = null;
    this.paintShell();
    this.go(code ? `#/signin/error/${code}` : '#/signin');
  },
  // The broker no longer knows this sign-in (a 401): it ended while it owed its second factor,
  // or it was signed out elsewhere; the sign-in page says which.
  sessionEnded() {
    if (!this.me) this.signedOut();
    else this.signedOut(this.me.mfa === 'pending' ? 'expired' : 'signedout');
  },
  async signOut() {
    try {
      const r = await post('/api/v1/auth/logout');
      // Signed in through the identity provider: sign out there too (it comes back here).
      if (r && r.redirect) {
        this.me = null;
        location.assign(r.redirect);
        return;
      }
    } catch (e) {
      // Signed out already, or the broker is unreachable: the page forgets the user either way.
    }
    this.signedOut();
    announce('You are signed out.');
  },
};

const routes = [
  [/^#\/signin(?:\/error\/([a-z]+))?$/, (m) => showSignIn(app, m[1]), false],
  [/^#\/desktops$/, () => showDesktops(app), true],
  [/^#\/mfa$/, () => showMfa(app), true],
  [/^#\/security$/, () => showSecurity(app), true],
  [/^#\/desktop\/([^/]+)$/, (m) => showViewer(app, decodeURIComponent(m[1])), true],
  [/^#\/admin\/pools$/, () => showPools(app), true],
  [/^#\/admin\/nodes$/, () => showNodes(app), true],
  [/^#\/admin\/images$/, () => showImages(), true],
  [/^#\/admin\/sessions$/, () => showSessions(app), true],
  [/^#\/admin\/audit$/, () => showAudit(app), true],
  [/^#\/admin\/users$/, () => showUsers(app), true],
  [/^#\/admin\/tokens$/, () => showTokens(app), true],
  [/^#\/admin\/recordings$/, () => showRecordings(app), true],
  [/^#\/admin\/recordings\/([^/]+)$/, (m) => showRecording(app, decodeURIComponent(m[1])), true],
  [/^#\/admin\/users\/([^/]+)$/, (m) => showUser(app, decodeURIComponent(m[1])), true],
];

let leaving = null;
// Each route() is one navigation; `shown` is the newest whose page has finished. A page that
// was still loading when the user went on (a slow list) may paint over the newer page when it
// finishes: the newer one is then shown again.
let routeSeq = 0;
let shown = 0;

async function route() {
  const seq = ++routeSeq;
  if (leaving) {
    const l = leaving;
    leaving = null;
    l();
  }
  document.body.classList.remove('viewing');
  const hash = location.hash || '#/desktops';
  for (const [re, show, needsUser] of routes) {
    const m = hash.match(re);
    if (!m) continue;
    if (needsUser && !app.me) {
      await app.refreshMe().catch(() => null);
      if (!app.me) {
        app.go('#/signin');
        return;
      }
    }
    // A sign-in that owes its second factor goes there first, then where it was going.
    if (needsUser && app.me.mfa === 'pending' && hash !== '#/mfa') {
      mfaThen(hash);
      app.go('#/mfa');
      return;
    }
    for (const a of document.querySelectorAll('[data-nav]')) {
      if (hash === `#/${a.dataset.nav}`) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    clearStatus();
    try {
      const left = (await show(m)) || null;
      if (seq !== routeSeq) {
        // Superseded while it loaded: undo what it started, and if the newer page is
        // already on screen (this one may have painted over it), show that one again.
        if (left) left();
        if (shown > seq) route();
        return;
      }
      shown = seq;
      leaving = left;
    } catch (e) {
      if (seq !== routeSeq) return;
      if (e instanceof ApiError && e.status === 401) {
        app.sessionEnded();
      } else if (e instanceof ApiError && e.status === 403 && e.field === 'mfa') {
        mfaThen(hash);
        app.go('#/mfa');
      } else if (e instanceof ApiError && e.status === 403) {
        announce('You are not allowed to see this page.', true);
      } else {
        announce(e.message || String(e), true);
      }
    }
    return;
  }
  app.go('#/desktops');
}

document.getElementById('sign-out').addEventListener('click', () => app.signOut());
window.addEventListener('hashchange', route);
app.refreshMe().catch(() => null).finally(route);
