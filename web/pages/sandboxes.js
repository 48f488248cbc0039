// The active team's sandboxes: a searchable table that refreshes itself, and the create dialog.

import { api } from '../api.js';
import { age, mib, parseKeyValues, timeout } from '../format.js';
import { alertBox, busy, button, dataTable, emptyState, field, fill, h, icon, markField, openDialog, pageHeader, toast } from '../ui.js';
import { currentTeam, hasTeam } from '../store.js';
import { actionButtons, isLive, onOpsChange, statusBadge } from './sandbox-actions.js';

const REFRESH_MS = 4000;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

export default {
  title: 'Sandboxes',
  render(ctx) {
    let all = [];
    const alert = alertBox();
    const noTeam = !hasTeam();
    const noTeamNote = 'You have no active team: create one in the sidebar, or ask a team admin to add you.';

    const search = h('input', { type: 'search', class: 'search-input', placeholder: 'Search by id, status, template, metadata…', 'aria-label': 'Search sandboxes', oninput: show });
    const showEnded = h('input', { type: 'checkbox', id: 'show-ended', onchange: show });
    const updated = h('span', { class: 'muted small', 'aria-live': 'off' });
    const createBtn = button('New sandbox', {
      variant: 'primary',
      icon: 'plus',
      disabled: noTeam,
      'aria-describedby': noTeam ? 'no-team-note' : null,
      onclick: () => createSandboxDialog({ onCreated: load }),
    });

    const table = dataTable({
      label: 'Sandboxes',
      empty: () =>
        all.length === 0
          ? noTeam
            ? emptyState('No active team', 'Sandboxes belong to a team; they show here once you are in one.')
            : emptyState('No sandboxes yet', 'A sandbox is a microVM that starts in seconds. Create one to run code in it.', button('New sandbox', { variant: 'primary', icon: 'plus', onclick: () => createBtn.click() }))
          : emptyState('Nothing matches', 'No sandbox matches the search or they have all ended.'),
      columns: [
        { label: 'ID', cell: (s) => h('a', { href: `/sandboxes/${s.id}`, class: 'mono' }, s.id) },
        { label: 'Status', cell: (s) => statusBadge(s.status, s.id) },
        { label: 'Template', cell: (s) => s.template },
        { label: 'Host', class: 'col-opt', cell: (s) => (s.host_id ? h('span', { class: 'mono small' }, s.host_id) : '—') },

        { label: 'Resources', cell: (s) => `${s.vcpus} vCPU · ${mib(s.memory_mb)}` },
        { label: 'Timeout', class: 'col-opt', cell: (s) => timeout(s.timeout_sec) },
        { label: 'Age', cell: (s) => age(s.created_at) },
        { label: 'Actions', class: 'actions-cell', cell: (s) => h('div', { class: 'row-actions' }, actionButtons(s, load, { compact: true })) },
      ],
    });

    function show() {
      const q = search.value.trim().toLowerCase();
      const rows = all.filter((s) => (showEnded.checked || isLive(s)) && (!q || haystack(s).includes(q)));
      table.update(rows);
    }

    async function load() {
      if (noTeam) return table.update([]);
      try {
        all = await api.sandboxes({ signal: ctx.signal });
        all.sort((a, b) => b.created_at - a.created_at);
        alert.clear();
        updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
        show();
      } catch (err) {
        alert.show(err);
      }
    }

    load();
    ctx.every(REFRESH_MS, load);
    ctx.onCleanup(onOpsChange(show));

    return h(
      'div',
      { class: 'page' },
      pageHeader('Sandboxes', { subtitle: currentTeam() ? `The sandboxes of ${currentTeam().name}.` : 'No active team', actions: [createBtn] }),
      noTeam && h('p', { class: 'alert alert-info', id: 'no-team-note' }, noTeamNote),
      h(
        'div',
        { class: 'toolbar', hidden: noTeam },
        h('div', { class: 'search' }, icon('search'), search),
        h('label', { class: 'check', for: 'show-ended' }, showEnded, 'Show ended'),
        h('span', { class: 'toolbar-spacer' }),
        updated,
      ),
      alert,
      h('section', { class: 'card card-flush' }, table),
    );
  },
};

function haystack(s) {
  return [s.id, s.status, s.template, s.host_id, ...Object.entries(s.metadata ?? {}).flat()].join(' ').toLowerCase();
}

/**
 * The create dialog; `preset` fills it (e.g. { template, vcpus, memory_mb } from the Templates
 * page) and `onCreated(sandbox)` runs after the sandbox is up.
 */
export function createSandboxDialog({ preset = {}, onCreated } = {}) {
  openDialog({
    title: preset.template ? `New sandbox from ${preset.template}` : 'New sandbox',
    wide: true,
    build(close) {
      const template = h('input', { name: 'template', value: preset.template ?? 'minimal', required: true, spellcheck: 'false', list: 'template-names', autocomplete: 'off' });
      const names = h('datalist', { id: 'template-names' }, h('option', { value: 'minimal' }), h('option', { value: 'debian' }), h('option', { value: 'base' }));
      // The templates this team can start from (base ones on some host, and its snapshots).
      api
        .templates()
        .then((ts) => ts.length && fill(names, ts.map((t) => h('option', { value: t.name }, t.kind === 'base' ? 'base template' : `snapshot, ${t.host_id ?? ''}`))))
        .catch(() => {});
      const vcpus = h('input', { name: 'vcpus', type: 'number', min: 1, max: 16, value: String(preset.vcpus ?? 1), required: true });
      const memory = h('input', { name: 'memory_mb', type: 'number', min: 128, max: 65536, step: 64, value: String(preset.memory_mb ?? 256), required: true });
      const timeoutSec = h('input', { name: 'timeout_sec', type: 'number', min: 0, max: 604800, value: '300', required: true });
      const env = h('textarea', { name: 'env', rows: 3, class: 'mono', placeholder: 'API_URL=https://example.com\nDEBUG=1', spellcheck: 'false' });
      const metadata = h('textarea', { name: 'metadata', rows: 2, class: 'mono', placeholder: 'owner=ci\njob=1234', spellcheck: 'false' });
      const alert = alertBox();
      const progress = h('div', { class: 'progress', hidden: true, role: 'status' }, h('div', { class: 'progress-bar' }), h('p', { class: 'muted small' }, 'Booting a microVM on one of your hosts. This takes a few seconds.'));
      const submit = button('Create sandbox', { variant: 'primary', type: 'submit' });
      const cancel = button('Cancel', { onclick: close });

      const form = h(
        'form',
        {
          class: 'stack',
          novalidate: true,
          async onsubmit(e) {
            e.preventDefault();
            alert.clear();
            let body;
            try {
              body = {
                template: template.value.trim() || 'minimal',
                vcpus: int(vcpus, 'vCPUs'),
                memory_mb: int(memory, 'Memory'),
                timeout_sec: int(timeoutSec, 'Timeout'),
                env: parseKeyValues(env.value, 'Environment', (k) => (ENV_NAME.test(k) ? null : `"${k}" is not a variable name (letters, digits and _, not starting with a digit).`)),
                metadata: parseKeyValues(metadata.value, 'Metadata'),
              };
            } catch (err) {
              return alert.show(err);
            }
            const inputs = form.querySelectorAll('input, textarea');
            inputs.forEach((i) => (i.disabled = true));
            cancel.disabled = true;
            progress.hidden = false;
            try {
              const s = await busy(submit, (sec) => `Starting… ${sec}s`, () => api.createSandbox(body));
              close();
              toast(`Sandbox ${s.id} is ${s.status}.`);
              onCreated?.(s);
            } catch (err) {
              alert.show(err);
              markField(form, err);
            } finally {
              inputs.forEach((i) => (i.disabled = false));
              cancel.disabled = false;
              progress.hidden = true;
            }
          },
        },
        h(
          'div',
          { class: 'grid-2' },
          field('Template', template, 'minimal (busybox), debian (python3), base (E2B\'s default), or one of your snapshots (see Templates).'),
          field('vCPUs', vcpus),
          field('Memory (MiB)', memory, '128 to 65536.'),
          field('Idle timeout (seconds)', timeoutSec, '0 means never.'),
        ),
        names,
        field('Environment', env, 'One KEY=VALUE per line.'),
        field('Metadata', metadata, 'One key=value per line; searchable in the list.'),
        progress,
        alert,
        h('div', { class: 'actions' }, cancel, submit),
      );
      return form;
    },
  });
}

function int(input, label) {
  const v = input.value.trim();
  if (!/^\d+$/.test(v)) {
    input.setAttribute('aria-invalid', 'true');
    throw new Error(`${label} must be a whole number.`);
  }
  input.removeAttribute('aria-invalid');
  return Number(v);
}
