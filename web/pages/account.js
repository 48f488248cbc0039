// The signed-in user's account: where they are signed in (GET /v1/auth/sessions, "Sign out" per
// session: DELETE /v1/auth/sessions/{id}) and the password change (POST /v1/auth/password), which
// signs out every other session.

import { api } from '../api.js';
import { ago, dateTime } from '../format.js';
import { alertBox, badge, busy, button, card, confirmDialog, dataTable, emptyState, field, h, markField, pageHeader, toast } from '../ui.js';
import { store } from '../store.js';

const METHODS = { password: 'Password', signup: 'Sign-up', github: 'GitHub' };

/** "Firefox on Linux"-ish, from a User-Agent; the raw text stays in the title. */
function client(ua) {
  if (!ua) return 'Unknown client';
  if (/^sandboxctl\//.test(ua)) return 'sandboxctl CLI';
  const browser = /Edg\//.test(ua) ? 'Edge' : /Firefox\//.test(ua) ? 'Firefox' : /Chrom(e|ium)\//.test(ua) ? 'Chrome' : /Safari\//.test(ua) ? 'Safari' : null;
  const os = /Windows/.test(ua) ? 'Windows' : /Mac OS X/.test(ua) ? 'macOS' : /Android/.test(ua) ? 'Android' : /iPhone|iPad/.test(ua) ? 'iOS' : /Linux/.test(ua) ? 'Linux' : null;
  if (browser) return os ? `${browser} on ${os}` : browser;
  return ua.length > 40 ? `${ua.slice(0, 40)}…` : ua;
}

export default {
  title: 'Account',
  render(ctx) {
    const header = pageHeader('Account', { subtitle: `${store.me.name} · ${store.me.email}` });
    const alert = alertBox();
    const table = dataTable({
      label: 'Sessions',
      empty: emptyState('No sessions', 'Nothing is signed in.'),
      columns: [
        { label: 'Client', cell: (s) => h('span', { title: s.user_agent ?? '' }, h('strong', {}, client(s.user_agent)), s.current ? [' ', badge('this session', 'running')] : null) },
        { label: 'Signed in', cell: (s) => h('span', { title: dateTime(s.created_at) }, `${ago(s.created_at)} · ${METHODS[s.method] ?? s.method}`) },
        { label: 'Last active', cell: (s) => h('span', { title: dateTime(s.last_seen_at) }, ago(s.last_seen_at)) },
        { label: 'Address', cell: (s) => h('code', { class: 'mono' }, s.ip ?? '—') },
        { label: 'Actions', class: 'actions-cell', cell: (s) => button('Sign out', { variant: 'danger', small: true, 'aria-label': s.current ? 'Sign out this session' : `Sign out ${client(s.user_agent)} (${s.id})`, onclick: () => end(s) }) },
      ],
    });

    async function load() {
      try {
        // This session first, then the most recently active.
        table.update((await api.sessions({ signal: ctx.signal })).sort((a, b) => Number(b.current) - Number(a.current)));
        alert.clear();
      } catch (err) {
        alert.show(err);
      }
    }

    function end(s) {
      if (s.current) return ctx.app.logOut();
      confirmDialog({
        title: 'Sign out this session?',
        message: h('span', {}, h('strong', {}, client(s.user_agent)), ' is signed out at once; it has to sign in again.'),
        confirmLabel: 'Sign out',
        busyLabel: 'Signing out…',
        danger: true,
        action: () => api.endSession(s.id),
        onDone: () => {
          toast('Signed out that session.');
          load();
        },
      });
    }

    const current = h('input', { name: 'current_password', type: 'password', autocomplete: 'current-password', required: true });
    const next = h('input', { name: 'new_password', type: 'password', autocomplete: 'new-password', required: true, minlength: 8 });
    const submit = button('Change password', { variant: 'primary', type: 'submit' });
    const formAlert = alertBox();
    const form = h(
      'form',
      {
        class: 'stack',
        novalidate: true,
        async onsubmit(e) {
          e.preventDefault();
          formAlert.clear();
          if (!current.value) return formAlert.show('Enter your current password.');
          if (next.value.length < 8) {
            markField(form, { field: 'new_password' });
            return formAlert.show('The new password must be at least 8 characters.');
          }
          try {
            const r = await busy(submit, 'Changing…', () => api.changePassword(current.value, next.value, { signal: ctx.signal }));
            current.value = '';
            next.value = '';
            const n = r.ended_sessions;
            toast(n ? `Password changed. ${n} other session${n === 1 ? ' was' : 's were'} signed out.` : 'Password changed.');
            load();
          } catch (err) {
            formAlert.show(err.field === 'current_password' ? 'That is not your current password.' : err);
            markField(form, err);
          }
        },
      },
      field('Current password', current),
      field('New password', next, 'At least 8 characters. Every other session is signed out.'),
      formAlert,
      h('div', { class: 'actions' }, submit),
    );

    load();
    return h(
      'div',
      { class: 'page' },
      header,
      alert,
      card('Where you are signed in', h('div', { class: 'card-flush-inner' }, table)),
      card('Change password', form),
    );
  },
};
