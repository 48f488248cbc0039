// One sandbox: its details and a "run command" box. The page is a list of panels, each
// { id, render(sandbox, ctx) → Element, update?(sandbox) }: the console log, the file browser and
// the live terminal become panels here when their API routes exist.

import { api, isAbort } from '../api.js';
import { dateTime, mib, ms, splitCommand, timeout } from '../format.js';
import { alertBox, busy, button, card, errorText, fill, h, icon } from '../ui.js';
import { actionButtons, statusBadge } from './sandbox-actions.js';

const REFRESH_MS = 4000;

export default {
  title: (ctx) => ctx.params.id,
  render(ctx) {
    const id = ctx.params.id;
    const head = h('div');
    const body = h('div', { class: 'stack-lg' }, h('p', { class: 'muted' }, 'Loading…'));
    let sandbox = null;
    let mounted = [];

    async function load() {
      try {
        const s = await api.sandbox(id, { signal: ctx.signal });
        const first = !sandbox;
        sandbox = s;
        renderHead();
        if (first) {
          mounted = panels.map((p) => ({ p, el: p.render(s, ctx) }));
          fill(body, mounted.map((m) => m.el));
        } else {
          for (const m of mounted) m.p.update?.(m.el, s);
        }
      } catch (err) {
        if (isAbort(err)) return;
        if (!sandbox) fill(body, h('section', { class: 'card' }, h('p', { class: 'alert alert-error', role: 'alert' }, err.status === 404 ? `There is no sandbox ${id} in your active team.` : errorText(err)), h('a', { href: '/sandboxes' }, 'Back to sandboxes')));
      }
    }

    function renderHead() {
      fill(
        head,
        h(
          'header',
          { class: 'page-head' },
          h('div', {}, h('a', { href: '/sandboxes', class: 'back-link' }, icon('back'), 'Sandboxes'), h('h1', { tabindex: '-1', class: 'mono title-id' }, id, ' ', statusBadge(sandbox.status))),
          h('div', { class: 'page-actions' }, actionButtons(sandbox, load, { small: false })),
        ),
      );
    }

    fill(head, h('header', { class: 'page-head' }, h('div', {}, h('a', { href: '/sandboxes', class: 'back-link' }, icon('back'), 'Sandboxes'), h('h1', { tabindex: '-1', class: 'mono title-id' }, id))));
    load();
    ctx.every(REFRESH_MS, load);
    return h('div', { class: 'page' }, head, body);
  },
};

// ---- Panels

const detailsPanel = {
  id: 'details',
  render(s) {
    const el = card('Details');
    this.update(el, s);
    return el;
  },
  update(el, s) {
    const rows = [
      ['Status', statusBadge(s.status)],
      ['Template', s.template],
      ['Host', s.host_id ? h('span', { class: 'mono' }, s.host_id) : '—'],
      ['vCPUs', s.vcpus],
      ['Memory', mib(s.memory_mb)],
      ['Idle timeout', timeout(s.timeout_sec)],
      ['Created', dateTime(s.created_at)],
      ['Started', dateTime(s.started_at)],
      s.ended_at && ['Ended', dateTime(s.ended_at)],
      s.boot_ms !== null && s.boot_ms !== undefined && ['Boot time', ms(s.boot_ms)],
      s.error && ['Error', h('span', { class: 'text-bad' }, s.error)],
    ].filter(Boolean);
    const meta = Object.entries(s.metadata ?? {});
    fill(
      el,
      h('h2', { class: 'card-title' }, 'Details'),
      h('dl', { class: 'details' }, rows.map(([k, v]) => h('div', {}, h('dt', {}, k), h('dd', {}, v)))),
      meta.length > 0 && h('h3', { class: 'card-subtitle' }, 'Metadata'),
      meta.length > 0 && h('dl', { class: 'details' }, meta.map(([k, v]) => h('div', {}, h('dt', { class: 'mono' }, k), h('dd', { class: 'mono' }, v)))),
    );
  },
};

const execPanel = {
  id: 'exec',
  render(s, ctx) {
    const input = h('input', { name: 'command', class: 'mono', placeholder: 'uname -a', autocomplete: 'off', spellcheck: 'false', 'aria-label': 'Command' });
    const run = button('Run', { variant: 'primary', icon: 'play', type: 'submit' });
    const note = h('p', { class: 'muted small', id: 'exec-note' });
    const alert = alertBox();
    const results = h('div', { class: 'exec-results', 'aria-live': 'polite' });
    const form = h(
      'form',
      {
        class: 'exec-form',
        async onsubmit(e) {
          e.preventDefault();
          alert.clear();
          let words;
          try {
            words = splitCommand(input.value);
          } catch (err) {
            return alert.show(err);
          }
          if (words.length === 0) return alert.show('Type a command to run, e.g. uname -a.');
          const [cmd, ...args] = words;
          try {
            const r = await busy(run, (sec) => (sec ? `Running… ${sec}s` : 'Running…'), () => api.exec(s.id, { cmd, args }, { signal: ctx.signal }));
            results.prepend(resultView(input.value, r));
            while (results.children.length > 10) results.lastChild.remove();
          } catch (err) {
            alert.show(err);
          }
        },
      },
      h('div', { class: 'exec-line' }, h('span', { class: 'prompt mono', 'aria-hidden': 'true' }, '$'), input, run),
    );
    const el = card('Run a command', h('p', { class: 'muted small' }, 'Runs the program directly, not through a shell: use ', h('code', {}, "sh -c '…'"), ' for pipes and redirects.'), form, note, alert, results);
    el.dataset.panel = 'exec';
    el._controls = { input, run, note };
    this.update(el, s);
    return el;
  },
  update(el, s) {
    const { input, run, note } = el._controls;
    const ok = s.status === 'running';
    input.disabled = !ok;
    if (!run.hasAttribute('aria-busy')) run.disabled = !ok;
    note.textContent = ok ? '' : `Commands run only in a running sandbox; this one is ${s.status}.`;
    note.hidden = ok;
  },
};

function resultView(line, r) {
  const flags = [r.timed_out && 'timed out', r.truncated && 'output truncated'].filter(Boolean).join(', ');
  return h(
    'article',
    { class: 'exec-result' },
    h(
      'header',
      { class: 'exec-result-head' },
      h('code', { class: 'mono' }, `$ ${line}`),
      h('span', { class: ['badge', r.exit_code === 0 ? 'badge-ok' : 'badge-bad', 'exit-code'] }, `exit ${r.exit_code}`),
      h('span', { class: 'muted small' }, ms(r.duration_ms), flags && ` · ${flags}`),
    ),
    r.stdout && h('div', { class: 'stream' }, h('div', { class: 'stream-label' }, 'stdout'), h('pre', { class: 'stdout', 'aria-label': 'stdout' }, r.stdout)),
    r.stderr && h('div', { class: 'stream' }, h('div', { class: 'stream-label' }, 'stderr'), h('pre', { class: 'stderr', 'aria-label': 'stderr' }, r.stderr)),
    !r.stdout && !r.stderr && h('p', { class: 'muted small' }, 'No output.'),
  );
}

/** In order on the page. Later: logsPanel (console), filesPanel, terminalPanel (PTY over WebSocket). */
const panels = [detailsPanel, execPanel];
