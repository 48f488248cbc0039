// The dashboard's entry point: session start-up, the router, the shell (sidebar with the team
// switcher and the user's name) and the actions that change who is signed in or which team is
// active. Pages live in pages/*.js and get a `ctx` (see mountPage).

import { api, cancelAll, isAbort, onUnauthorized, setToken } from './api.js';
import { alertBox, busy, button, clearToasts, confirmDialog, errorText, field, fill, h, icon, openDialog, toast } from './ui.js';
import { capitalize, initials } from './format.js';
import { TOKEN_KEY, canSeeHosts, currentTeam, resetStore, saveToken, savedToken, store } from './store.js';
import loginPage from './pages/login.js';
import sandboxesPage from './pages/sandboxes.js';
import sandboxPage from './pages/sandbox.js';
import templatesPage from './pages/templates.js';
import keysPage from './pages/keys.js';
import teamPage from './pages/team.js';
import hostsPage from './pages/hosts.js';
import accountPage from './pages/account.js';

const PRODUCT = 'sandboxctl';

const routes = [
  { path: '/login', page: loginPage, public: true, props: { mode: 'login' } },
  { path: '/signup', page: loginPage, public: true, props: { mode: 'signup' } },
  { path: '/sandboxes', page: sandboxesPage },
  { path: '/sandboxes/:id', page: sandboxPage },
  { path: '/templates', page: templatesPage },
  { path: '/keys', page: keysPage },
  { path: '/team', page: teamPage },
  { path: '/account', page: accountPage },
  { path: '/hosts', page: hostsPage, allowed: canSeeHosts, denied: 'Hosts are managed by platform admins and by team owners and admins.' },
];

const nav = [
  { href: '/sandboxes', label: 'Sandboxes', icon: 'box' },
  { href: '/templates', label: 'Templates', icon: 'layers' },
  { href: '/keys', label: 'API keys', icon: 'key' },
  { href: '/team', label: 'Team', icon: 'users' },
  { href: '/hosts', label: 'Hosts', icon: 'server', when: canSeeHosts },
  { href: '/account', label: 'Account', icon: 'user' },
];

const root = document.getElementById('app');
let shell = null; // the signed-in layout, rebuilt for every user
let page = null; // { controller, cleanups } of the mounted page
let flash = null; // a message for the login page (e.g. why the session ended)
// Secrets from a link's fragment (`#invite=…`, `#bootstrap=…`), kept here once the address bar
// no longer shows them: the sign-up page fills them in, a signed-in user is offered the invite.
const pending = { invite: null, bootstrap: null };
let firstRender = true;

// ---- Routing

function match(pathname) {
  const parts = pathname.replace(/\/+$/, '').split('/');
  for (const route of routes) {
    const want = route.path.split('/');
    if (want.length !== parts.length) continue;
    const params = {};
    if (want.every((w, i) => (w.startsWith(':') ? (params[w.slice(1)] = decode(parts[i])) : w === parts[i]))) return { route, params };
  }
  return null;
}

function decode(part) {
  try {
    return decodeURIComponent(part);
  } catch {
    return part;
  }
}

export function navigate(path, { replace = false } = {}) {
  if (path !== window.location.pathname + window.location.search) window.history[replace ? 'replaceState' : 'pushState']({}, '', path);
  render();
}

function render() {
  leavePage();
  const path = window.location.pathname;
  const m = match(path);
  if (path === '/' || path === '') return navigate(store.me ? '/sandboxes' : '/login', { replace: true });
  if (!store.me && !m?.route.public) return navigate('/login', { replace: true });
  if (store.me && m?.route.public) return navigate('/sandboxes', { replace: true });

  if (m?.route.public) {
    shell = null;
    const mount = h('main', { class: 'auth-layout', id: 'main' });
    fill(root, mount);
    mountPage(mount, m.route.page, m.route.props, m.params);
    return;
  }
  if (!shell) buildShell();
  updateShell();
  if (!m) return showInMain('Page not found', h('p', {}, 'There is nothing at ', h('code', {}, path), '. ', h('a', { href: '/sandboxes' }, 'Go to sandboxes'), '.'));
  if (m.route.allowed && !m.route.allowed()) return showInMain('Not available', h('p', {}, m.route.denied));
  mountPage(shell.main, m.route.page, m.route.props, m.params);
}

function showInMain(title, body) {
  document.title = `${title} · ${PRODUCT}`;
  fill(shell.main, h('div', { class: 'page' }, h('header', { class: 'page-head' }, h('h1', { tabindex: '-1' }, title)), h('section', { class: 'card' }, body)));
}

/**
 * Mounts a page. A page is { title, render(ctx) → Element }; ctx gives it the route params, an
 * AbortSignal that fires when the page is left, every(ms, fn) for auto-refresh, onCleanup(fn),
 * and the app's actions.
 */
function mountPage(container, pageDef, props, params) {
  const controller = new AbortController();
  const cleanups = [];
  page = { controller, cleanups };
  const ctx = {
    params,
    props: props ?? {},
    signal: controller.signal,
    app,
    onCleanup: (fn) => cleanups.push(fn),
    every(msec, fn) {
      let running = false;
      const id = setInterval(async () => {
        if (document.hidden || running) return;
        running = true;
        try {
          await fn();
        } catch (err) {
          if (!isAbort(err)) console.warn('refresh failed', err);
        } finally {
          running = false;
        }
      }, msec);
      cleanups.push(() => clearInterval(id));
    },
  };
  const title = typeof pageDef.title === 'function' ? pageDef.title(ctx) : pageDef.title;
  document.title = `${title} · ${PRODUCT}`;
  fill(container, pageDef.render(ctx));
  if (!firstRender) container.querySelector('h1')?.focus({ preventScroll: true });
  firstRender = false;
  window.scrollTo(0, 0);
}

function leavePage() {
  if (!page) return;
  page.controller.abort();
  for (const fn of page.cleanups) fn();
  page = null;
}

// ---- The shell

function buildShell() {
  const teamSelect = h('select', { id: 'team-select', class: 'team-select', onchange: (e) => switchTeam(e.target.value) });
  const navList = h('ul', { class: 'nav-list' });
  const user = h('div', { class: 'user' });
  const sidebar = h(
    'aside',
    { class: 'sidebar', id: 'sidebar' },
    h('a', { class: 'brand', href: '/sandboxes' }, icon('logo', 'brand-logo'), h('span', {}, PRODUCT)),
    h(
      'div',
      { class: 'team-switcher' },
      h('label', { for: 'team-select', class: 'sidebar-label' }, 'Team'),
      teamSelect,
      h('button', { type: 'button', class: 'btn btn-sidebar btn-sm', onclick: createTeamDialog }, icon('plus'), h('span', {}, 'Create team')),
    ),
    h('nav', { 'aria-label': 'Main' }, navList),
    h('div', { class: 'sidebar-spacer' }),
    user,
  );
  const menuBtn = h('button', { type: 'button', class: 'btn btn-ghost btn-icon menu-btn', 'aria-label': 'Menu', 'aria-controls': 'sidebar', 'aria-expanded': 'false', onclick: () => toggleMenu() }, icon('menu'));
  const topbar = h('header', { class: 'topbar' }, menuBtn, h('a', { class: 'brand', href: '/sandboxes' }, icon('logo', 'brand-logo'), h('span', {}, PRODUCT)));
  const backdrop = h('div', { class: 'backdrop', onclick: () => toggleMenu(false) });
  const main = h('main', { class: 'main', id: 'main' });
  const skip = h('a', { class: 'skip-link', href: '#main', onclick: (e) => (e.preventDefault(), main.querySelector('h1')?.focus()) }, 'Skip to content');
  fill(root, skip, h('div', { class: 'layout' }, topbar, sidebar, backdrop, main));
  shell = { sidebar, teamSelect, navList, user, main, menuBtn };
}

function toggleMenu(open = !shell.sidebar.classList.contains('open')) {
  shell.sidebar.classList.toggle('open', open);
  shell.menuBtn.setAttribute('aria-expanded', String(open));
}

function updateShell() {
  const { me, teams } = store;
  toggleMenu(false);
  const options = teams.map((t) => h('option', { value: t.id }, t.name));
  if (!me.team_id) options.unshift(h('option', { value: '', disabled: true }, 'No active team'));
  fill(shell.teamSelect, options);
  shell.teamSelect.value = me.team_id ?? '';
  shell.teamSelect.disabled = teams.length === 0;

  const here = window.location.pathname;
  fill(
    shell.navList,
    nav
      .filter((n) => !n.when || n.when())
      .map((n) => h('li', {}, h('a', { href: n.href, class: 'nav-link', 'aria-current': here === n.href || here.startsWith(`${n.href}/`) ? 'page' : null }, icon(n.icon), h('span', {}, n.label)))),
  );

  const role = [me.role && capitalize(me.role), me.is_admin && 'Platform admin'].filter(Boolean).join(' · ');
  fill(
    shell.user,
    h(
      'div',
      { class: 'user-id' },
      h('span', { class: 'avatar', 'aria-hidden': 'true' }, initials(me.name)),
      h('div', { class: 'user-text' }, h('div', { class: 'user-name', title: me.name }, me.name), h('div', { class: 'user-role', title: role }, role || 'No team')),
    ),
    h('button', { type: 'button', class: 'btn btn-sidebar btn-sm btn-block', onclick: () => logOut() }, icon('out'), h('span', {}, 'Log out')),
  );
}

function createTeamDialog() {
  openDialog({
    title: 'Create a team',
    build(close) {
      const name = h('input', { name: 'name', required: true, maxlength: 100, autocomplete: 'off' });
      const alert = alertBox();
      const ok = button('Create team', { variant: 'primary', type: 'submit' });
      return h(
        'form',
        {
          class: 'stack',
          async onsubmit(e) {
            e.preventDefault();
            alert.clear();
            try {
              await busy(ok, 'Creating…', async () => {
                const team = await api.createTeam(name.value.trim());
                close();
                await switchTeam(team.id, { message: `Created team ${team.name}; it is now your active team.` });
              });
            } catch (err) {
              alert.show(err);
            }
          },
        },
        field('Team name', name, 'You become its owner, and it becomes your active team.'),
        alert,
        h('div', { class: 'actions' }, button('Cancel', { onclick: close }), ok),
      );
    },
  });
}

// ---- Session actions (the only code that changes who is signed in or the active team)

async function loadIdentity() {
  const [me, teams] = await Promise.all([api.me(), api.teams()]);
  store.me = me;
  store.teams = teams;
}

/** Forgets everything of the previous user: requests, state, DOM, dialogs, toasts. */
function resetClient() {
  cancelAll();
  leavePage();
  resetStore();
  setToken(null);
  shell = null;
  root.replaceChildren();
  for (const d of document.querySelectorAll('dialog')) d.remove();
  clearToasts();
}

async function signIn(auth) {
  resetClient();
  saveToken(auth.token);
  setToken(auth.token);
  try {
    await loadIdentity();
  } catch (err) {
    resetClient();
    saveToken(null);
    throw err;
  }
  flash = null;
  navigate('/sandboxes');
  offerInvite();
}

/** A signed-in user opened an invite link: ask before joining its team. */
function offerInvite() {
  const token = pending.invite;
  if (!token || !store.me) return;
  pending.invite = null;
  confirmDialog({
    title: 'Join a team?',
    message: 'You opened an invite link. Join the team it is for? You keep your other teams.',
    confirmLabel: 'Join team',
    busyLabel: 'Joining…',
    action: () => api.acceptInvite(token),
    onDone: (team) => switchTeam(team.id, { message: `You joined ${team.name} as ${team.role === 'admin' ? 'an admin' : 'a member'}.` }),
  });
}

/** Takes `#invite=` and `#bootstrap=` out of the address (they are secrets); true if there were any. */
function takeLinkSecrets() {
  const frag = new URLSearchParams(window.location.hash.slice(1));
  if (!frag.has('invite') && !frag.has('bootstrap')) return false;
  if (frag.get('invite')) pending.invite = frag.get('invite');
  if (frag.get('bootstrap')) pending.bootstrap = frag.get('bootstrap');
  window.history.replaceState({}, '', window.location.pathname === '/' ? (store.me ? '/sandboxes' : '/signup') : window.location.pathname);
  return true;
}

/** A link opened while the app runs (only the fragment changed). */
function onHashChange() {
  if (!takeLinkSecrets()) return;
  if (store.me) offerInvite();
  else navigate('/signup');
}

function signOut(message = null) {
  resetClient();
  saveToken(null);
  flash = message;
  navigate('/login');
}

/** Logs out: the server ends the session (its token stops working anywhere), then signOut(). */
async function logOut() {
  try {
    await api.logout();
  } catch {
    // Over already (or the server is away): forgetting the token here is all that is left.
  }
  signOut();
}

/** Makes another team active: a new token, fresh identity, and the current page re-read. */
async function switchTeam(teamId, { message } = {}) {
  if (!teamId || teamId === store.me?.team_id) return;
  try {
    const auth = await api.switchTeam(teamId);
    cancelAll();
    saveToken(auth.token);
    setToken(auth.token);
    await loadIdentity();
  } catch (err) {
    if (isAbort(err)) return;
    toast(errorText(err), 'error');
    if (shell) shell.teamSelect.value = store.me?.team_id ?? '';
    return;
  }
  toast(message ?? `Switched to team ${currentTeam()?.name ?? ''}.`);
  // A sandbox page belongs to the old team.
  if (window.location.pathname.startsWith('/sandboxes/')) navigate('/sandboxes');
  else render();
}

/** After leaving or deleting the active team: move to another team if there is one. */
async function afterTeamGone(message) {
  const teams = await api.teams();
  const next = teams.find((t) => t.is_default) ?? teams[0];
  if (next) {
    await switchTeam(next.id, { message: `${message} Your active team is now ${next.name}.` });
  } else {
    await loadIdentity();
    toast(message);
    render();
  }
}

/** Re-reads the identity (e.g. after a rename) and refreshes the sidebar. */
async function refreshIdentity() {
  await loadIdentity();
  if (shell) updateShell();
}

/** The message the login page shows once (why the previous session ended). */
function takeFlash() {
  const m = flash;
  flash = null;
  return m;
}

const app = { navigate, signIn, signOut, logOut, switchTeam, afterTeamGone, refreshIdentity, takeFlash, pending };

// ---- Start

function interceptLinks(e) {
  if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  const a = e.target.closest('a[href]');
  if (!a || a.target || a.hasAttribute('download')) return;
  const url = new URL(a.href, window.location.href);
  if (url.origin !== window.location.origin || url.pathname.startsWith('/v1/') || url.hash) return;
  e.preventDefault();
  navigate(url.pathname + url.search);
}

const OAUTH_ERRORS = {
  email_taken: 'An account with your GitHub email already exists. Sign in with its password.',
  signup_closed: 'This server does not create accounts through GitHub. Sign up with an invite link, then sign in.',
  oauth_failed: 'Signing in with GitHub did not work. Please try again.',
};

async function start() {
  onUnauthorized(() => {
    if (store.token) signOut('Your session has expired. Please sign in again.');
  });
  document.addEventListener('click', interceptLinks);
  window.addEventListener('popstate', render);
  document.addEventListener('keydown', (e) => e.key === 'Escape' && shell?.sidebar.classList.contains('open') && toggleMenu(false));
  // Another tab signed in or out: follow it.
  window.addEventListener('storage', (e) => e.key === TOKEN_KEY && window.location.reload());

  window.addEventListener('hashchange', onHashChange);
  const linked = takeLinkSecrets();

  // Back from GitHub: the sign-in waits in an HttpOnly cookie only this browser holds, and
  // POST /v1/auth/github/finish redeems it (once). The fragment only says "done" or names an
  // error: nothing in a URL signs anyone in or out, so a link someone else made cannot.
  const back = new URLSearchParams(window.location.hash.slice(1));
  let oauthNote = null;
  if (back.has('oauth') || back.has('oauth_error') || back.has('oauth_token')) {
    window.history.replaceState({}, '', window.location.pathname);
    if (back.get('oauth') === 'done') {
      try {
        return await signIn(await api.githubFinish());
      } catch (err) {
        if (isAbort(err)) return;
        // Nothing to redeem (a link someone made, a reload, a stale cookie): say so, change nothing.
        oauthNote = err.status === 0 ? errorText(err) : OAUTH_ERRORS.oauth_failed;
      }
    } else if (back.has('oauth_error')) {
      oauthNote = OAUTH_ERRORS[back.get('oauth_error')] ?? OAUTH_ERRORS.oauth_failed;
    }
  }

  const token = savedToken();
  if (token) {
    saveToken(token);
    setToken(token);
    try {
      await loadIdentity();
    } catch (err) {
      if (err.status === 401 || isAbort(err)) return; // signOut() already showed the login page
      fill(root, h('main', { class: 'auth-layout' }, h('section', { class: 'card auth-card' }, h('h1', {}, PRODUCT), h('p', { class: 'alert alert-error', role: 'alert' }, errorText(err)), button('Try again', { variant: 'primary', onclick: () => window.location.reload() }))));
      return;
    }
  }
  // A GitHub sign-in that did not finish: said on the login page, or (still signed in as before)
  // in a toast.
  if (oauthNote && !store.me) flash = oauthNote;
  // An invite or bootstrap link for someone signed out leads to the sign-up page.
  if (linked && !store.me) return navigate('/signup', { replace: true });
  render();
  if (oauthNote && store.me) toast(oauthNote, 'error');
  offerInvite();
}

start();
