// Hosts (platform admins: all; team owners/admins: their BYOC hosts): status, capacity and
// utilisation (vCPUs and memory given to VMs, free disk, from heartbeats), adding a
// host (its one-line register command to copy), new tokens for pending hosts, tags, draining, and
// deleting with a preview of the sandboxes it would take down.

import { api } from '../api.js';
import { ago, dateTime, mib } from '../format.js';
import { alertBox, badge, busy, button, confirmDialog, copyField, dataTable, emptyState, field, fill, h, markField, openDialog, pageHeader, toast } from '../ui.js';
import { currentTeam, isTeamAdmin, store } from '../store.js';

const REFRESH_MS = 5000;
const STATUS_KIND = { online: 'ok', pending: 'wait', unreachable: 'bad', draining: 'info' };

export default {
  title: 'Hosts',
  render(ctx) {
    const alert = alertBox();
    const add = button('Add host', { variant: 'primary', icon: 'plus', onclick: () => createDialog(load) });
    const table = dataTable({
      label: 'Hosts',
      empty: emptyState('No hosts yet', 'Sandboxes run on hosts: Linux machines running the sandboxctl agent. Add one to get its register command.', button('Add host', { variant: 'primary', icon: 'plus', onclick: () => add.click() })),
      columns: [
        { label: 'Host', cell: (x) => h('div', {}, h('div', { class: 'strong' }, x.name || x.id), x.name && h('div', { class: 'mono small muted' }, x.id), x.address && h('div', { class: 'mono small muted', title: 'Where the agent listens' }, x.address), x.tags?.length > 0 && h('div', { class: 'tags' }, x.tags.map((t) => h('span', { class: 'tag' }, t)))) },
        { label: 'Status', cell: (x) => badge(x.status, STATUS_KIND[x.status] ?? 'off') },
        { label: 'Type', class: 'col-opt', cell: (x) => (x.type === 'byoc' ? h('span', {}, 'BYOC', teamName(x.team_id) && h('span', { class: 'muted' }, ` · ${teamName(x.team_id)}`)) : 'Regular') },
        { label: 'Capacity and use', cell: capacity },
        { label: 'VMs', class: 'num', cell: (x) => x.running_vms ?? '—' },
        { label: 'Heartbeat', cell: (x) => h('span', { title: dateTime(x.last_heartbeat_at) }, ago(x.last_heartbeat_at)) },
        {
          label: 'Actions',
          class: 'actions-cell',
          cell: (x) =>
            h(
              'div',
              { class: 'row-actions' },
              x.status === 'pending' && button('New token', { small: true, 'aria-label': `New registration token for ${x.name || x.id}`, onclick: () => newToken(x) }),
              button('Tags', { small: true, 'aria-label': `Tags of ${x.name || x.id}`, onclick: () => tagsDialog(x, load) }),
              x.status === 'online' && button('Drain', { small: true, 'aria-label': `Drain ${x.name || x.id}`, onclick: () => drain(x, load) }),
              button('Delete', { variant: 'danger', small: true, 'aria-label': `Delete ${x.name || x.id}`, onclick: () => deleteDialog(x, load) }),
            ),
        },
      ],
    });

    async function load() {
      try {
        const hosts = await api.hosts({ signal: ctx.signal });
        hosts.sort((a, b) => a.created_at - b.created_at);
        table.update(hosts);
        alert.clear();
      } catch (err) {
        alert.show(err);
      }
    }

    load();
    ctx.every(REFRESH_MS, load);
    return h(
      'div',
      { class: 'page' },
      pageHeader('Hosts', { subtitle: store.me.is_admin ? 'All hosts of this server.' : 'The BYOC hosts of the teams you administer.', actions: [add] }),
      alert,
      h('section', { class: 'card card-flush' }, table),
    );
  },
};

function teamName(id) {
  return id ? (store.teams.find((t) => t.id === id)?.name ?? null) : null;
}

/** Cores and memory with what the VMs use of them (see `utilisation`), and how VMs run there
 * (KVM, or TCG: software emulation). */
function capacity(x) {
  const parts = [x.cpu_cores && `${x.cpu_cores} CPU`, x.memory_mb && mib(x.memory_mb)].filter(Boolean);
  if (!parts.length) return '—';
  const title = [x.arch, x.disk_gb && `${x.disk_gb} GB disk free`, x.accel_reason, x.cgroups && `cgroups ${x.cgroups}`].filter(Boolean).join(' · ');
  const accel = x.accel && h('span', { class: 'tag accel' }, x.accel.toUpperCase());
  const use = utilisation(x);
  return use ? h('div', { class: 'capacity', title }, use, accel) : h('span', { title }, parts.join(' · '), accel);
}

/** What the host's live VMs were given of its vCPUs and memory, and its free disk, as of its last
 * heartbeat: one meter per resource. */
function utilisation(x) {
  if (!x.last_heartbeat_at || !x.cpu_cores) return null;
  const row = (label, value, max, text) =>
    h('div', { class: 'usage-row' }, h('span', {}, label), h('meter', { min: 0, max, value: Math.min(value, max), low: max * 0.7, high: max * 0.9, optimum: 0, 'aria-label': `${label} of ${x.name || x.id}: ${text}` }), h('span', { class: 'usage-text' }, text));
  const vcpus = x.used_vcpus ?? 0;
  const memory = x.used_memory_mb ?? 0;
  return h(
    'div',
    { class: 'usage', dataset: { usage: x.id } },
    row('CPU', vcpus, x.cpu_cores, `${vcpus} / ${x.cpu_cores} vCPU`),
    x.memory_mb && row('RAM', memory, x.memory_mb, `${mib(memory)} / ${mib(x.memory_mb)}`),
    x.disk_gb !== null && x.disk_gb !== undefined && h('div', { class: 'usage-row' }, h('span', {}, 'Disk'), h('span', { class: 'usage-text usage-span' }, `${x.disk_gb} GB free`)),
  );
}

/** The register command, once, with what to do next. */
function commandView(r) {
  return h(
    'div',
    { class: 'stack register' },
    h('p', {}, 'Run this on the new host. The token in it works once, within the hour:'),
    copyField(r.register_command, 'Register command', { multiline: true }),
    h('p', { class: 'muted small' }, 'Then start the agent there with ', h('code', {}, 'sandboxctl agent run --data-dir /var/lib/sandboxctl/agent'), '. The host turns online with its first heartbeat.'),
  );
}

function createDialog(reload) {
  const team = currentTeam();
  const canByoc = Boolean(team) && isTeamAdmin();
  const canRegular = store.me.is_admin;
  openDialog({
    title: 'Add a host',
    wide: true,
    onClose: reload,
    build(close) {
      const choice = (value, label, hint, enabled) =>
        h('label', { class: ['choice', !enabled && 'disabled'] }, h('input', { type: 'radio', name: 'type', value, disabled: !enabled }), h('span', {}, h('strong', {}, label), h('small', { class: 'muted' }, hint)));
      const types = h(
        'fieldset',
        { class: 'choices' },
        h('legend', {}, 'Type'),
        choice('regular', 'Regular', canRegular ? 'Shared by every team on this server.' : 'Only platform admins add shared hosts.', canRegular),
        choice('byoc', `BYOC for ${team?.name ?? 'your team'}`, canByoc ? 'Runs only this team’s sandboxes.' : 'You must be an owner or admin of the active team.', canByoc),
      );
      const first = types.querySelector('input:not([disabled])');
      if (first) first.checked = true;
      const name = h('input', { name: 'name', maxlength: 100, placeholder: 'e.g. fra-1', autocomplete: 'off' });
      const a = alertBox();
      const submit = button('Create host', { variant: 'primary', type: 'submit', disabled: !first });
      const body = h('div');
      const form = h(
        'form',
        {
          class: 'stack',
          async onsubmit(e) {
            e.preventDefault();
            a.clear();
            const type = types.querySelector('input:checked')?.value;
            const req = { type, name: name.value.trim() || undefined };
            if (type === 'byoc') req.team_id = team.id;
            try {
              const r = await busy(submit, 'Creating…', () => api.createHost(req));
              toast(`Host ${r.host.id} created; it waits for its agent.`);
              fill(body, h('div', { class: 'stack' }, commandView(r), h('div', { class: 'actions' }, button('Done', { variant: 'primary', onclick: close }))));
            } catch (err) {
              a.show(err);
              markField(form, err);
            }
          },
        },
        types,
        field('Name (optional)', name),
        a,
        h('div', { class: 'actions' }, button('Cancel', { onclick: close }), submit),
      );
      return fill(body, form);
    },
  });
}

function newToken(x) {
  openDialog({
    title: `Register ${x.name || x.id}`,
    wide: true,
    build(close) {
      const body = h('div', {}, h('p', { class: 'muted' }, 'Issuing a new token…'));
      api.hostToken(x.id).then(
        (r) => fill(body, h('div', { class: 'stack' }, commandView(r), h('div', { class: 'actions' }, button('Done', { variant: 'primary', onclick: close })))),
        (err) => {
          const a = alertBox();
          a.show(err);
          fill(body, a, h('div', { class: 'actions' }, button('Close', { onclick: close })));
        },
      );
      return body;
    },
  });
}

function drain(x, reload) {
  confirmDialog({
    title: `Drain ${x.name || x.id}?`,
    message: 'No new sandboxes are placed on a draining host; the ones it runs keep running. Delete it once they are gone.',
    confirmLabel: 'Drain host',
    busyLabel: 'Draining…',
    action: () => api.drainHost(x.id),
    onDone: () => {
      toast(`Host ${x.name || x.id} is draining.`);
      reload();
    },
  });
}

function tagsDialog(x, reload) {
  openDialog({
    title: `Tags of ${x.name || x.id}`,
    build(close) {
      const tags = h('input', { name: 'tags', autocomplete: 'off', spellcheck: 'false', placeholder: 'zone=fra gpu ssd' });
      tags.value = (x.tags ?? []).join(' ');
      const a = alertBox();
      const ok = button('Save tags', { variant: 'primary', type: 'submit' });
      const form = h(
        'form',
        {
          class: 'stack',
          async onsubmit(e) {
            e.preventDefault();
            a.clear();
            const list = tags.value.split(/[\s,]+/).filter(Boolean);
            try {
              await busy(ok, 'Saving…', () => api.setHostTags(x.id, list));
              close();
              toast('Tags saved.');
              reload();
            } catch (err) {
              a.show(err);
              markField(form, err);
            }
          },
        },
        field('Tags', tags, 'Separated by spaces or commas; letters, digits and - _ . : = /.'),
        a,
        h('div', { class: 'actions' }, button('Cancel', { onclick: close }), ok),
      );
      return form;
    },
  });
}

/**
 * Deleting: the preview lists the sandboxes still on the host; with some, deleting needs "force"
 * (they are destroyed). A plain delete that races a new sandbox answers 409 with its ids: the
 * dialog then shows those and offers force.
 */
function deleteDialog(x, reload) {
  const label = x.name || x.id;
  openDialog({
    title: `Delete host ${label}?`,
    wide: true,
    build(close) {
      const body = h('div', { class: 'stack' }, h('p', { class: 'muted' }, 'Checking what runs on this host…'));
      const a = alertBox();
      const force = h('input', { type: 'checkbox', id: 'force-delete', name: 'force' });
      const ok = button('Delete host', { variant: 'danger', type: 'submit' });
      const affected = h('div', { class: 'stack stack-sm' });

      const showSandboxes = (ids) => {
        if (ids.length === 0) {
          fill(affected, h('p', {}, 'No sandboxes run on this host. Its agent loses its credentials and the host leaves the fleet.'));
          force.checked = false;
          ok.disabled = false;
          return;
        }
        fill(
          affected,
          h('p', { class: 'alert alert-warn' }, `This host still runs ${ids.length} sandbox${ids.length === 1 ? '' : 'es'}:`),
          h('ul', { class: 'id-list', 'aria-label': 'Affected sandboxes' }, ids.map((id) => h('li', {}, h('code', {}, id)))),
          h('label', { class: 'check', for: 'force-delete' }, force, `Destroy ${ids.length === 1 ? 'it' : 'them'} and delete the host anyway (force)`),
        );
        ok.disabled = !force.checked;
      };
      force.addEventListener('change', () => (ok.disabled = !force.checked));

      const form = h(
        'form',
        {
          class: 'stack',
          async onsubmit(e) {
            e.preventDefault();
            a.clear();
            try {
              await busy(ok, 'Deleting…', () => api.deleteHost(x.id, force.checked));
              close();
              toast(`Host ${label} deleted.`);
              reload();
            } catch (err) {
              if (err.code === 'host_has_sandboxes') {
                showSandboxes(err.sandboxIds ?? []);
                a.show(err);
              } else {
                a.show(err);
              }
            }
          },
        },
        affected,
        a,
        h('div', { class: 'actions' }, button('Cancel', { onclick: close }), ok),
      );
      api.hostDeletePreview(x.id).then(
        (p) => {
          showSandboxes(p.sandbox_ids);
          fill(body, form);
        },
        (err) => {
          a.show(err);
          fill(body, form);
          ok.disabled = false;
        },
      );
      return body;
    },
  });
}
