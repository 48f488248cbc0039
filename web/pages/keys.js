// The active team's API keys: create (the key is shown once), list, revoke.

import { api } from '../api.js';
import { ago, dateTime } from '../format.js';
import { alertBox, busy, button, card, confirmDialog, copyField, dataTable, emptyState, field, fill, h, markField, pageHeader, toast } from '../ui.js';
import { currentTeam, hasTeam } from '../store.js';

export default {
  title: 'API keys',
  render(ctx) {
    const header = pageHeader('API keys', { subtitle: 'Keys let programs and the CLI manage this team’s sandboxes (Authorization: Bearer sk_…).' });
    if (!hasTeam()) {
      return h('div', { class: 'page' }, header, card(null, emptyState('No active team', 'API keys belong to a team. Create a team in the sidebar, or ask a team admin to add you.')));
    }
    const alert = alertBox();
    const created = h('div');
    const table = dataTable({
      label: 'API keys',
      empty: emptyState('No API keys', 'Create one to use the API or the CLI from scripts.'),
      columns: [
        { label: 'Name', cell: (k) => h('strong', {}, k.name) },
        { label: 'Key', cell: (k) => h('code', { class: 'mono' }, `${k.prefix}…`) },
        { label: 'Created', cell: (k) => h('span', { title: dateTime(k.created_at) }, ago(k.created_at)) },
        { label: 'Last used', cell: (k) => (k.last_used_at ? h('span', { title: dateTime(k.last_used_at) }, ago(k.last_used_at)) : h('span', { class: 'muted' }, 'never')) },
        { label: 'Actions', class: 'actions-cell', cell: (k) => button('Revoke', { variant: 'danger', small: true, 'aria-label': `Revoke ${k.name}`, onclick: () => revoke(k) }) },
      ],
    });

    async function load() {
      try {
        table.update(await api.keys({ signal: ctx.signal }));
        alert.clear();
      } catch (err) {
        alert.show(err);
      }
    }

    function revoke(k) {
      confirmDialog({
        title: 'Revoke this API key?',
        message: h('span', {}, 'Programs using ', h('strong', {}, k.name), ' (', h('code', {}, `${k.prefix}…`), ') stop working at once.'),
        confirmLabel: 'Revoke key',
        busyLabel: 'Revoking…',
        danger: true,
        action: () => api.revokeKey(k.id),
        onDone: () => {
          toast(`Revoked ${k.name}.`);
          load();
        },
      });
    }

    const name = h('input', { name: 'name', required: true, maxlength: 100, placeholder: 'e.g. ci-runner', autocomplete: 'off' });
    const submit = button('Create key', { variant: 'primary', type: 'submit', icon: 'plus' });
    const formAlert = alertBox();
    const form = h(
      'form',
      {
        class: 'inline-form',
        novalidate: true,
        async onsubmit(e) {
          e.preventDefault();
          formAlert.clear();
          if (!name.value.trim()) return formAlert.show('Give the key a name, so you know later what uses it.');
          try {
            const k = await busy(submit, 'Creating…', () => api.createKey(name.value.trim(), { signal: ctx.signal }));
            name.value = '';
            showOnce(k);
            load();
          } catch (err) {
            formAlert.show(err);
            markField(form, err);
          }
        },
      },
      field('Name', name),
      submit,
    );

    function showOnce(k) {
      const done = button('I have copied it', { onclick: () => created.replaceChildren() });
      fill(
        created,
        h(
          'section',
          { class: 'card card-highlight new-key', 'aria-labelledby': 'new-key-title' },
          h('h2', { class: 'card-title', id: 'new-key-title' }, `New key “${k.name}”`),
          h('p', { class: 'alert alert-warn' }, 'Copy this key now. It is shown only once: the server keeps just a hash of it.'),
          copyField(k.key, 'API key'),
          h('div', { class: 'actions' }, done),
        ),
      );
      created.querySelector('input')?.focus();
    }

    load();
    return h(
      'div',
      { class: 'page' },
      header,
      card(`Create a key for ${currentTeam()?.name ?? 'this team'}`, form, formAlert),
      created,
      alert,
      h('section', { class: 'card card-flush' }, table),
    );
  },
};
