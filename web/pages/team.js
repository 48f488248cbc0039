// The active team: rename, members (separate Name and Email columns) with their roles, invite
// links (the only way in: made, listed and revoked here), leaving, and deleting the team.

import { api, isAbort } from '../api.js';
import { ago, capitalize, dateTime } from '../format.js';
import { alertBox, badge, busy, button, card, confirmDialog, copyField, dataTable, emptyState, field, fill, h, markField, openDialog, pageHeader, toast } from '../ui.js';
import { hasTeam, store } from '../store.js';

export default {
  title: 'Team',
  render(ctx) {
    if (!hasTeam()) {
      return h('div', { class: 'page' }, pageHeader('Team'), card(null, emptyState('No active team', 'Create a team with the button in the sidebar, or ask a team owner or admin for an invite link.')));
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
      fill(body, admin ? renameCard(team) : null, membersCard(team, admin), admin ? invitesCard(team) : null, dangerCard(team));
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
      return h('section', { class: 'card' }, h('h2', { class: 'card-title' }, `Members (${team.members.length})`), h('div', { class: 'card-flush-inner' }, table));
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

    function invitesCard(team) {
      const role = h('select', { name: 'role' }, h('option', { value: 'member' }, 'Member'), h('option', { value: 'admin' }, 'Admin'));
      const make = button('Create invite link', { type: 'submit', variant: 'primary', icon: 'plus' });
      const a = alertBox();
      const made = h('div', { class: 'stack stack-sm', hidden: true });
      const table = dataTable({
        label: 'Pending invites',
        empty: emptyState('No pending invites', 'Links you make show here until they are used, revoked or expire.'),
        columns: [
          { label: 'Role', cell: (i) => badge(i.role, 'off') },
          { label: 'Created', cell: (i) => h('span', { title: dateTime(i.created_at) }, ago(i.created_at)) },
          { label: 'Expires', cell: (i) => dateTime(i.expires_at) },
          { label: 'Actions', class: 'actions-cell', cell: (i) => button('Revoke', { variant: 'danger', small: true, 'aria-label': `Revoke the ${i.role} invite made ${ago(i.created_at)}`, onclick: () => revokeInvite(team, i) }) },
        ],
      });
      const refresh = async () => {
        try {
          table.update(await api.invites(team.id, { signal: ctx.signal }));
        } catch (err) {
          if (!isAbort(err)) a.show(err);
        }
      };
      const form = h(
        'form',
        {
          class: 'inline-form',
          async onsubmit(e) {
            e.preventDefault();
            a.clear();
            try {
              const inv = await busy(make, 'Creating…', () => api.createInvite(team.id, role.value));
              fill(
                made,
                h('p', {}, `An invite to join as ${inv.role === 'admin' ? 'an admin' : 'a member'}. Send this link to the person you invite; it works once, for 7 days, and is shown only now.`),
                copyField(inv.url, 'Invite link'),
              );
              made.hidden = false;
              refresh();
            } catch (err) {
              a.show(err);
              markField(form, err);
            }
          },
        },
        field('Role', role),
        make,
      );
      invitesCard.refresh = refresh;
      refresh();
      return h(
        'section',
        { class: 'card' },
        h('h2', { class: 'card-title' }, 'Invite people'),
        h('p', { class: 'muted small' }, 'People join a team only with an invite link they accept: a new user signs up with it, someone with an account opens it while signed in.'),
        form,
        a,
        made,
        h('div', { class: 'card-flush-inner' }, table),
      );
    }

    function revokeInvite(team, i) {
      confirmDialog({
        title: 'Revoke this invite?',
        message: `The ${i.role} invite made ${ago(i.created_at)} stops working; whoever has the link can no longer join.`,
        confirmLabel: 'Revoke invite',
        busyLabel: 'Revoking…',
        danger: true,
        action: () => api.revokeInvite(team.id, i.id),
        onDone: () => {
          toast('Invite revoked.');
          invitesCard.refresh?.();
        },
      });
    }

    function dangerCard(team) {
      const owner = team.role === 'owner';
      const leave = button('Leave team', {
        variant: 'danger',
        onclick: () =>
          confirmDialog({
            title: `Leave ${team.name}?`,
            message: 'You lose access to its sandboxes and API keys until an owner or admin invites you again.',
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
          : h('div', { class: 'danger-row' }, h('div', {}, h('strong', {}, 'Leave this team'), h('p', { class: 'muted small' }, 'An owner or admin can invite you again.')), leave),
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
