// The active team: rename, members (separate Name and Email columns) with their roles, adding
// people by email with suggestions, leaving, and deleting the team.

import { api, isAbort } from '../api.js';
import { ago, capitalize, dateTime } from '../format.js';
import { alertBox, badge, busy, button, card, confirmDialog, dataTable, emptyState, field, fill, h, markField, openDialog, pageHeader, toast } from '../ui.js';
import { hasTeam, store } from '../store.js';

export default {
  title: 'Team',
  render(ctx) {
    if (!hasTeam()) {
      return h('div', { class: 'page' }, pageHeader('Team'), card(null, emptyState('No active team', 'Create a team with the button in the sidebar, or ask a team admin to add you by your email.')));
    }
    const teamId = store.me.team_id;
    const alert = alertBox();
    const body = h('div', { class: 'stack-lg' }, h('p', { class: 'muted' }, 'Loading…'));
    const head = h('div');

    async function load() {
      try {
        const team = await api.team(teamId, { signal: ctx.signal });
        alert.clear();
        draw(team);
      } catch (err) {
        if (!isAbort(err)) alert.show(err);
      }
    }

    function draw(team) {
      const role = team.role;
      const admin = role === 'owner' || role === 'admin';
      fill(head, pageHeader(team.name, { subtitle: h('span', {}, 'Your role: ', badge(role, role === 'owner' ? 'info' : 'off'), ' · ', h('span', { class: 'mono' }, team.slug)) }));
      fill(body, admin ? renameCard(team) : null, membersCard(team, admin), dangerCard(team));
    }

    function renameCard(team) {
      const name = h('input', { name: 'name', required: true, maxlength: 100, value: team.name, autocomplete: 'off' });
      const save = button('Rename', { type: 'submit' });
      const a = alertBox();
      const form = h(
        'form',
        {
          class: 'inline-form',
          async onsubmit(e) {
            e.preventDefault();
            a.clear();
            if (name.value.trim() === team.name) return;
            try {
              await busy(save, 'Saving…', () => api.renameTeam(team.id, name.value.trim()));
              toast('Team renamed.');
              await ctx.app.refreshIdentity();
              load();
            } catch (err) {
              a.show(err);
              markField(form, err);
            }
          },
        },
        field('Team name', name),
        save,
      );
      return card('Settings', form, a);
    }

    function membersCard(team, admin) {
      const me = store.me.user_id;
      const table = dataTable({
        label: 'Members',
        empty: emptyState('No members', ''),
        columns: [
          { label: 'Name', cell: (m) => h('span', { class: 'member-name' }, m.name, m.user_id === me && h('span', { class: 'muted' }, ' (you)')) },
          { label: 'Email', cell: (m) => h('span', { class: 'member-email' }, m.email) },
          { label: 'Role', cell: (m) => roleCell(team, m, admin) },
          { label: 'Joined', class: 'col-opt', cell: (m) => h('span', { title: dateTime(m.joined_at) }, ago(m.joined_at)) },
          {
            label: 'Actions',
            class: 'actions-cell',
            cell: (m) => (admin && m.role !== 'owner' && m.user_id !== me ? button('Remove', { variant: 'danger', small: true, 'aria-label': `Remove ${m.name}`, onclick: () => remove(team, m) }) : null),
          },
        ],
      });
      table.update(team.members);
      return h('section', { class: 'card' }, h('h2', { class: 'card-title' }, `Members (${team.members.length})`), admin && addMemberForm(team), h('div', { class: 'card-flush-inner' }, table));
    }

    function roleCell(team, m, admin) {
      if (!admin || m.role === 'owner') return badge(m.role, m.role === 'owner' ? 'info' : 'off');
      const select = h('select', { class: 'role-select', 'aria-label': `Role of ${m.name}` }, ['admin', 'member'].map((r) => h('option', { value: r }, capitalize(r))));
      select.value = m.role;
      select.addEventListener('change', async () => {
        select.disabled = true;
        try {
          await api.setRole(team.id, m.user_id, select.value);
          toast(`${m.name} is now ${select.value === 'admin' ? 'an admin' : 'a member'}.`);
          if (m.user_id === store.me.user_id) await ctx.app.refreshIdentity();
          load();
        } catch (err) {
          select.value = m.role;
          toast(err.message, 'error');
        } finally {
          select.disabled = false;
        }
      });
      return select;
    }

    function remove(team, m) {
      confirmDialog({
        title: 'Remove this member?',
        message: `${m.name} (${m.email}) loses access to ${team.name} and its sandboxes.`,
        confirmLabel: 'Remove member',
        busyLabel: 'Removing…',
        danger: true,
        action: () => api.removeMember(team.id, m.user_id),
        onDone: () => {
          toast(`Removed ${m.name}.`);
          load();
        },
      });
    }

    function addMemberForm(team) {
      const email = h('input', { name: 'email', type: 'email', required: true, placeholder: 'name@example.com', autocomplete: 'off', spellcheck: 'false' });
      const role = h('select', { name: 'role' }, h('option', { value: 'member' }, 'Member'), h('option', { value: 'admin' }, 'Admin'));
      const add = button('Add member', { type: 'submit', variant: 'primary', icon: 'plus' });
      const a = alertBox();
      const suggest = userSuggestions(email, ctx.signal);
      const form = h(
        'form',
        {
          class: 'inline-form add-member',
          novalidate: true,
          async onsubmit(e) {
            e.preventDefault();
            a.clear();
            if (!email.value.trim()) return a.show('Type the email address of the person to add.');
            try {
              const m = await busy(add, 'Adding…', () => api.addMember(team.id, email.value.trim(), role.value));
              toast(`Added ${m.name} as ${m.role}.`);
              load();
            } catch (err) {
              a.show(err.status === 404 ? 'No account has that email address. They need to sign up first.' : err);
              markField(form, err);
            }
          },
        },
        h('div', { class: 'field combo' }, h('label', { for: 'member-email' }, 'Add by email'), suggest.wrap),
        field('Role', role),
        add,
      );
      email.id = 'member-email';
      email.setAttribute('aria-describedby', 'member-email-hint');
      return h('div', { class: 'stack stack-sm' }, form, h('small', { class: 'hint', id: 'member-email-hint' }, 'People in your teams are suggested as you type (3+ characters); anyone else by their exact email.'), a);
    }

    function dangerCard(team) {
      const owner = team.role === 'owner';
      const leave = button('Leave team', {
        variant: 'danger',
        onclick: () =>
          confirmDialog({
            title: `Leave ${team.name}?`,
            message: 'You lose access to its sandboxes and API keys until someone adds you again.',
            confirmLabel: 'Leave team',
            busyLabel: 'Leaving…',
            danger: true,
            action: () => api.leaveTeam(team.id),
            onDone: () => ctx.app.afterTeamGone(`You left ${team.name}.`),
          }),
      });
      const del = button('Delete team', { variant: 'danger', onclick: () => deleteDialog(team) });
      return h(
        'section',
        { class: 'card card-danger' },
        h('h2', { class: 'card-title' }, 'Danger zone'),
        owner
          ? h('div', { class: 'danger-row' }, h('div', {}, h('strong', {}, 'Delete this team'), h('p', { class: 'muted small' }, 'Stops all of its sandboxes and revokes its API keys. The owner cannot leave; delete the team instead.')), del)
          : h('div', { class: 'danger-row' }, h('div', {}, h('strong', {}, 'Leave this team'), h('p', { class: 'muted small' }, 'You can be added again by an owner or admin.')), leave),
      );
    }

    function deleteDialog(team) {
      openDialog({
        title: `Delete ${team.name}?`,
        build(close) {
          const typed = h('input', { name: 'confirm', autocomplete: 'off', spellcheck: 'false' });
          const ok = button('Delete team', { variant: 'danger', type: 'submit', disabled: true });
          typed.addEventListener('input', () => (ok.disabled = typed.value.trim() !== team.name));
          const a = alertBox();
          return h(
            'form',
            {
              class: 'stack',
              async onsubmit(e) {
                e.preventDefault();
                if (typed.value.trim() !== team.name) return;
                try {
                  await busy(ok, 'Deleting…', () => api.deleteTeam(team.id));
                  close();
                  await ctx.app.afterTeamGone(`Deleted team ${team.name}.`);
                } catch (err) {
                  a.show(err);
                }
              },
            },
            h('p', {}, 'This stops every sandbox of the team and cannot be undone.'),
            field(h('span', {}, 'Type ', h('strong', {}, team.name), ' to confirm'), typed),
            a,
            h('div', { class: 'actions' }, button('Cancel', { onclick: close }), ok),
          );
        },
      });
    }

    load();
    return h('div', { class: 'page' }, head, alert, body);
  },
};

/**
 * An email input with suggestions from GET /v1/users/search (3+ characters), as an ARIA combobox:
 * arrows move, Enter picks, Escape closes.
 */
function userSuggestions(input, signal) {
  const list = h('ul', { class: 'suggestions', role: 'listbox', id: 'member-suggestions', hidden: true });
  input.setAttribute('role', 'combobox');
  input.setAttribute('aria-autocomplete', 'list');
  input.setAttribute('aria-controls', list.id);
  input.setAttribute('aria-expanded', 'false');
  let users = [];
  let active = -1;
  let timer = null;
  let seq = 0;

  const close = () => {
    list.hidden = true;
    input.setAttribute('aria-expanded', 'false');
    input.removeAttribute('aria-activedescendant');
    active = -1;
  };
  const pick = (u) => {
    input.value = u.email;
    close();
  };
  const draw = () => {
    fill(
      list,
      users.map((u, i) =>
        h(
          'li',
          { id: `sugg-${i}`, role: 'option', class: ['suggestion', i === active && 'active'], 'aria-selected': String(i === active), onmousedown: (e) => (e.preventDefault(), pick(u)) },
          h('span', { class: 'sugg-name' }, u.name),
          h('span', { class: 'sugg-email muted' }, u.email),
        ),
      ),
    );
    list.hidden = users.length === 0;
    input.setAttribute('aria-expanded', String(!list.hidden));
    if (active >= 0) input.setAttribute('aria-activedescendant', `sugg-${active}`);
    else input.removeAttribute('aria-activedescendant');
  };

  input.addEventListener('input', () => {
    clearTimeout(timer);
    const q = input.value.trim();
    if (q.length < 3) {
      users = [];
      return close();
    }
    timer = setTimeout(async () => {
      const mine = ++seq;
      try {
        const found = await api.searchUsers(q, { signal });
        if (mine !== seq) return;
        users = found.slice(0, 8);
        active = -1;
        draw();
      } catch {
        users = [];
        close();
      }
    }, 200);
  });
  input.addEventListener('keydown', (e) => {
    if (list.hidden) return;
    if (e.key === 'ArrowDown' || e.key === 'ArrowUp') {
      e.preventDefault();
      active = (active + (e.key === 'ArrowDown' ? 1 : -1) + users.length) % users.length;
      draw();
    } else if (e.key === 'Enter' && active >= 0) {
      e.preventDefault();
      pick(users[active]);
    } else if (e.key === 'Escape') {
      e.preventDefault();
      close();
    }
  });
  input.addEventListener('blur', () => setTimeout(close, 100));
  return { wrap: h('div', { class: 'combo-wrap' }, input, list) };
}
