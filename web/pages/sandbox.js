// One sandbox: its details (with the idle-timeout countdown and a control to extend it), its
// actions, its usage charts (pages/sandbox-usage.js), and tabs for the live terminal, the file browser, one-shot commands and the console
// log. A tab is a panel { id, label, icon, render(sandbox, ctx) → Element, update?(el, sandbox),
// shown?(el) } (pages/terminal.js, pages/files.js, execPanel and logsPanel below).

import { api, isAbort } from '../api.js';
import { ago, countdown, dateTime, duration, mib, ms, splitCommand, timeout } from '../format.js';
import { alertBox, busy, button, card, errorText, fill, h, icon, keepFocus, toast } from '../ui.js';
import { actionButtons, onOpsChange, pendingOp, statusBadge } from './sandbox-actions.js';
import { terminalPanel } from './terminal.js';
import { filesPanel } from './files.js';
import { usageCard } from './sandbox-usage.js';

const REFRESH_MS = 4000;

export default {
  title: (ctx) => ctx.params.id,
  render(ctx) {
    const id = ctx.params.id;
    const head = h('div');
    const body = h('div', { class: 'stack-lg' }, h('p', { class: 'muted' }, 'Loading…'));
    let sandbox = null;
    let headKey = null;
    let details = null;
    let usage = null;
    let tabs = null;

    async function load() {
      try {
        const s = await api.sandbox(id, { signal: ctx.signal });
        const first = !sandbox;
        sandbox = s;
        renderHead();
        if (first) {
          details = detailsCard(s, ctx, load);
          usage = usageCard(s, ctx);
          tabs = tabView(s, ctx);
          fill(body, details, usage, tabs);
        } else {
          details.update(s);
          usage.update(s);
          tabs.update(s);
        }
      } catch (err) {
        if (isAbort(err)) return;
        if (!sandbox) fill(body, h('section', { class: 'card' }, h('p', { class: 'alert alert-error', role: 'alert' }, err.status === 404 ? `There is no sandbox ${id} in your active team.` : errorText(err)), h('a', { href: '/sandboxes' }, 'Back to sandboxes')));
      }
    }

    /** The title with the status, and the actions; re-rendered only when they change. */
    function renderHead() {
      const op = pendingOp(id);
      const key = `${sandbox.status}|${op?.action.id ?? ''}`;
      if (key === headKey) return;
      headKey = key;
      keepFocus(head, null, () =>
        fill(
          head,
          h(
            'header',
            { class: 'page-head' },
            h('div', {}, h('a', { href: '/sandboxes', class: 'back-link' }, icon('back'), 'Sandboxes'), h('h1', { tabindex: '-1', class: 'mono title-id' }, id, ' ', statusBadge(sandbox.status, id))),
            h('div', { class: 'page-actions' }, actionButtons(sandbox, load, { small: false })),
          ),
        ),
      );
      details?.update(sandbox);
    }

    fill(head, h('header', { class: 'page-head' }, h('div', {}, h('a', { href: '/sandboxes', class: 'back-link' }, icon('back'), 'Sandboxes'), h('h1', { tabindex: '-1', class: 'mono title-id' }, id))));
    ctx.onCleanup(onOpsChange(() => sandbox && renderHead()));
    load();
    ctx.every(REFRESH_MS, load);
    ctx.every(1000, async () => details?.tick());
    return h('div', { class: 'page' }, head, body);
  },
};

// ---- Details

const TIMEOUTS = [
  [300, '5 minutes'],
  [900, '15 minutes'],
  [1800, '30 minutes'],
  [3600, '1 hour'],
  [4 * 3600, '4 hours'],
  [24 * 3600, '24 hours'],
  [7 * 24 * 3600, '7 days'],
  [0, 'Never'],
];

function detailsCard(initial, ctx, reload) {
  let s = initial;
  const dl = h('dl', { class: 'details' });
  const meta = h('div', { class: 'stack-sm' });
  const countdownEl = h('span', { class: 'countdown' });

  const select = h('select', { name: 'timeout_sec', id: 'timeout-select', 'aria-describedby': 'timeout-hint' });
  const submit = button('Extend timeout', { variant: 'secondary', type: 'submit' });
  const alert = alertBox();
  const form = h(
    'form',
    {
      class: 'timeout-form',
      async onsubmit(e) {
        e.preventDefault();
        alert.clear();
        const sec = Number(select.value);
        try {
          const updated = await busy(submit, 'Saving…', () => api.setSandboxTimeout(s.id, sec, { signal: ctx.signal }));
          toast(sec ? `The idle timeout of ${s.id} is ${duration(sec)}, counting from now.` : `${s.id} no longer times out.`);
          s = updated;
          update(updated);
          reload();
        } catch (err) {
          alert.show(err);
        }
      },
    },
    h('label', { for: 'timeout-select', class: 'timeout-label' }, 'Idle timeout'),
    select,
    submit,
    h('small', { class: 'hint', id: 'timeout-hint' }, 'Restarts the countdown from now. Commands, file transfers and an open terminal count as activity.'),
  );

  function options() {
    const known = TIMEOUTS.some(([v]) => v === s.timeout_sec);
    const list = known ? TIMEOUTS : [...TIMEOUTS, [s.timeout_sec, `${duration(s.timeout_sec)} (current)`]].sort((a, b) => (a[0] || Infinity) - (b[0] || Infinity));
    fill(select, list.map(([v, label]) => h('option', { value: String(v) }, label)));
    select.value = String(s.timeout_sec);
  }

  /** The countdown's text: when the idle timeout fires (running sandboxes only). */
  function tick() {
    if (!s.timeout_at) {
      countdownEl.textContent = s.status === 'running' ? 'never' : `— (${s.status})`;
      countdownEl.className = 'countdown';
      return;
    }
    const left = s.timeout_at - Math.floor(Date.now() / 1000);
    const then = s.on_timeout === 'kill' ? 'stops' : 'pauses';
    countdownEl.textContent = left > 0 ? `in ${countdown(left)}, then ${then}` : `now (${then} at the next check)`;
    countdownEl.className = left < 60 ? 'countdown countdown-soon' : 'countdown';
  }

  function update(next) {
    const statusChanged = next.status !== s.status || next.timeout_sec !== s.timeout_sec;
    s = next;
    const rows = [
      ['Status', statusBadge(s.status, s.id)],
      ['Template', s.template],
      ['Host', s.host_id ? h('span', { class: 'mono' }, s.host_id) : '—'],
      ['vCPUs', s.vcpus],
      ['Memory', mib(s.memory_mb)],
      ['Network', networkSummary(s.network)],
      ['Idle timeout', `${timeout(s.timeout_sec)}${s.timeout_sec ? `, then ${s.on_timeout === 'kill' ? 'stop' : 'pause'}` : ''}`],
      ['Times out', countdownEl],
      ['Last active', ago(s.last_active_at, '—')],
      ['Created', dateTime(s.created_at)],
      ['Started', dateTime(s.started_at)],
      s.ended_at && ['Ended', dateTime(s.ended_at)],
      s.boot_ms !== null && s.boot_ms !== undefined && ['Boot time', `${ms(s.boot_ms)}${s.boot_kind ? ` (${s.boot_kind === 'snapshot' ? 'from snapshot' : 'cold boot'})` : ''}`],
      s.error && ['Error', h('span', { class: 'text-bad' }, s.error)],
    ].filter(Boolean);
    fill(dl, rows.map(([k, v]) => h('div', {}, h('dt', {}, k), h('dd', {}, v))));
    const entries = Object.entries(s.metadata ?? {});
    fill(meta, entries.length > 0 && h('h3', { class: 'card-subtitle' }, 'Metadata'), entries.length > 0 && h('dl', { class: 'details' }, entries.map(([k, v]) => h('div', {}, h('dt', { class: 'mono' }, k), h('dd', { class: 'mono' }, v)))));
    const ended = s.status === 'stopped' || s.status === 'error';
    form.hidden = ended;
    netForm.update(s);
    if (statusChanged || !select.options.length) {
      if (document.activeElement !== select) options();
    }
    tick();
  }

  const netForm = networkForm(s, ctx, (updated) => {
    update(updated);
    reload();
  });
  const el = card('Details', dl, meta, form, alert, netForm);
  el.dataset.panel = 'details';
  update(s);
  return Object.assign(el, { update, tick });
}

// ---- Network

/** One line on what the sandbox may reach. */
function networkSummary(p) {
  if (!p) return 'none (no network device)';
  const parts = [p.internet ? 'internet open' : 'internet closed'];
  if (p.allow_out?.length) parts.push(`allows ${p.allow_out.join(', ')}`);
  if (p.deny_out?.length) parts.push(`denies ${p.deny_out.join(', ')}`);
  return parts.join('; ');
}

const cidrList = (text) => text.split(/[\s,]+/).map((x) => x.trim()).filter(Boolean);

/** The egress policy editor: internet on/off, networks to allow and to deny. */
function networkForm(initial, ctx, onSaved) {
  let s = initial;
  const internet = h('input', { type: 'checkbox', id: 'net-internet', name: 'internet' });
  const allow = h('input', { type: 'text', id: 'net-allow', name: 'allow_out', class: 'mono', placeholder: '10.99.0.0/16, 192.168.7.5' });
  const deny = h('input', { type: 'text', id: 'net-deny', name: 'deny_out', class: 'mono', placeholder: '203.0.113.0/24' });
  const submit = button('Save network policy', { variant: 'secondary', type: 'submit' });
  const alert = alertBox();
  let dirty = false;
  const mark = () => (dirty = true);
  for (const el of [internet, allow, deny]) el.addEventListener('input', mark);
  const form = h(
    'form',
    {
      class: 'stack-sm network-form',
      'aria-label': 'Network policy',
      async onsubmit(e) {
        e.preventDefault();
        alert.clear();
        const policy = { internet: internet.checked, allow_out: cidrList(allow.value), deny_out: cidrList(deny.value) };
        try {
          const updated = await busy(submit, 'Saving…', () => api.setSandboxNetwork(s.id, policy, { signal: ctx.signal }));
          toast(`The network policy of ${s.id} is in force.`);
          dirty = false;
          s = updated;
          fillFields();
          onSaved(updated);
        } catch (err) {
          alert.show(err);
        }
      },
    },
    h('label', { for: 'net-internet', class: 'check' }, internet, ' Internet (everything public)'),
    h('label', { for: 'net-allow' }, 'Also allow (CIDRs; opens private ranges)'),
    allow,
    h('label', { for: 'net-deny' }, 'Deny (CIDRs)'),
    deny,
    submit,
    h('small', { class: 'hint' }, 'The host, other sandboxes, loopback and link-local addresses (cloud metadata) are never reachable. New connections follow the policy at once.'),
    alert,
  );
  function fillFields() {
    internet.checked = s.network?.internet ?? true;
    allow.value = (s.network?.allow_out ?? []).join(', ');
    deny.value = (s.network?.deny_out ?? []).join(', ');
  }
  // Folded away by default: the page keeps the terminal in view.
  const box = h('details', { class: 'network-policy' }, h('summary', {}, 'Change the network policy'), form);
  function update(next) {
    s = next;
    box.hidden = !s.network || !['running', 'paused'].includes(s.status);
    if (!dirty && !form.contains(document.activeElement)) fillFields();
  }
  update(s);
  return Object.assign(box, { update });
}

// ---- Tabs

/** Tabs with the ARIA tabs pattern: arrow keys, Home and End move between them. */
function tabView(s, ctx) {
  const panels = [terminalPanel, filesPanel, execPanel, logsPanel];
  const fromHash = window.location.hash.slice(1);
  let current = panels.find((p) => p.id === fromHash) ?? panels[0];
  const list = h('div', { class: 'tabs', role: 'tablist', 'aria-label': 'Sandbox tools' });
  const entries = panels.map((p) => {
    const tab = h('button', { type: 'button', role: 'tab', class: 'tab', id: `tab-${p.id}`, 'aria-controls': `panel-${p.id}`, onclick: () => select(p, true) }, icon(p.icon), h('span', {}, p.label));
    const el = p.render(s, ctx);
    const panel = h('div', { role: 'tabpanel', class: 'tab-panel', id: `panel-${p.id}`, 'aria-labelledby': `tab-${p.id}`, dataset: { panel: p.id } }, el);
    list.append(tab);
    return { p, tab, panel, el, seen: false };
  });
  list.addEventListener('keydown', (e) => {
    const i = entries.findIndex((x) => x.p === current);
    const to = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: entries.length - 1 }[e.key];
    if (to === undefined) return;
    e.preventDefault();
    const next = entries[(to + entries.length) % entries.length];
    select(next.p, true);
    next.tab.focus();
  });

  function select(p, byUser) {
    current = p;
    for (const x of entries) {
      const on = x.p === p;
      x.tab.setAttribute('aria-selected', String(on));
      x.tab.tabIndex = on ? 0 : -1;
      x.panel.hidden = !on;
      if (on) {
        x.p.shown?.(x.el, !x.seen);
        x.seen = true;
      }
    }
    if (byUser) window.history.replaceState(window.history.state, '', `${window.location.pathname}#${p.id}`);
  }

  const el = h('section', { class: 'card card-tabs' }, list, entries.map((x) => x.panel));
  select(current, false);
  el.update = (next) => {
    for (const x of entries) x.p.update?.(x.el, next);
  };
  return el;
}

// ---- Run a command (one-shot exec)

const execPanel = {
  id: 'exec',
  label: 'Run command',
  icon: 'play',
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
    const el = h('div', { class: 'stack' }, h('p', { class: 'muted small' }, 'Runs the program directly, not through a shell: use ', h('code', {}, "sh -c '…'"), ' for pipes and redirects. The terminal tab has an interactive shell.'), form, note, alert, results);
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
  shown(el) {
    if (!el._controls.input.disabled) el._controls.input.focus({ preventScroll: true });
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

// ---- Console log

const LOG_FOLLOW_MS = 3000;

const logsPanel = {
  id: 'logs',
  label: 'Console log',
  icon: 'file',
  render(s, ctx) {
    let sandbox = s;
    let loading = false;
    const pre = h('pre', { class: 'console-log', tabindex: '0', 'aria-label': 'Console log' });
    const updated = h('span', { class: 'muted small', 'aria-live': 'off' });
    const alert = alertBox();
    const refresh = button('Refresh', { icon: 'refresh', small: true, onclick: () => load(true) });
    const follow = h('input', { type: 'checkbox', id: 'log-follow' });

    async function load(byUser) {
      if (loading) return;
      loading = true;
      try {
        const text = byUser ? await busy(refresh, 'Loading…', () => api.sandboxLogs(sandbox.id, { signal: ctx.signal })) : await api.sandboxLogs(sandbox.id, { signal: ctx.signal });
        alert.clear();
        const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
        pre.textContent = text || '(The log is empty.)';
        pre.classList.toggle('is-empty', !text);
        if (atEnd || byUser) pre.scrollTop = pre.scrollHeight;
        updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
      } catch (err) {
        if (!isAbort(err)) alert.show(err);
      } finally {
        loading = false;
      }
    }

    ctx.every(LOG_FOLLOW_MS, async () => {
      if (follow.checked && !pre.closest('[hidden]') && sandbox.status !== 'stopped') await load(false);
    });
    const el = h(
      'div',
      { class: 'stack' },
      h('div', { class: 'toolbar' }, h('p', { class: 'muted small' }, 'What the guest printed on its console: the kernel and init messages (the last 64 KiB).'), h('span', { class: 'toolbar-spacer' }), updated, h('label', { class: 'check', for: 'log-follow' }, follow, 'Follow'), refresh),
      alert,
      pre,
    );
    el._load = load;
    el._set = (next) => (sandbox = next);
    return el;
  },
  update(el, s) {
    el._set(s);
  },
  shown(el, first) {
    if (first) el._load(false);
  },
};
