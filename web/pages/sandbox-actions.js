// What a person can do to a sandbox, shared by the list's rows and the detail page: pause, resume,
// snapshot, stop. Each action says when it applies.
//
// Pause, resume and snapshot take a second or more. While one runs, the sandbox is "in flight":
// its status badge says so ("pausing…") and its button counts the seconds, on every page and
// across the pages' auto-refreshes (which re-render rows), until the server answers.

import { api } from '../api.js';
import { alertBox, badge, busy, button, confirmDialog, errorText, field, h, markField, openDialog, toast } from '../ui.js';
import { bytes } from '../format.js';

const LIVE = ['pending', 'starting', 'running', 'paused', 'missing'];

/** Sandbox id → { action, started } for the long operations in progress in this tab. */
const inflight = new Map();
const subscribers = new Set();
let ticker = null;

/** Calls `fn` whenever an operation starts or ends; returns the unsubscribe function. */
export function onOpsChange(fn) {
  subscribers.add(fn);
  return () => subscribers.delete(fn);
}

function changed() {
  for (const fn of [...subscribers]) fn();
  if (inflight.size && !ticker) ticker = setInterval(tick, 1000);
  if (!inflight.size && ticker) {
    clearInterval(ticker);
    ticker = null;
  }
}

/** Updates the seconds in every busy button on the page (they are re-rendered, so not by closure). */
function tick() {
  for (const el of document.querySelectorAll('[data-op-since]')) {
    el.textContent = opText(el.dataset.opLabel, Number(el.dataset.opSince));
  }
}

function opText(label, since) {
  const sec = Math.floor((Date.now() - since) / 1000);
  return sec ? `${label}… ${sec}s` : `${label}…`;
}

/** Runs a long operation on a sandbox, marking it in flight meanwhile. */
async function track(s, action, fn) {
  if (inflight.has(s.id)) throw new Error(`Sandbox ${s.id} is busy: ${inflight.get(s.id).action.busy.toLowerCase()}.`);
  inflight.set(s.id, { action, started: Date.now() });
  changed();
  try {
    return await fn();
  } finally {
    inflight.delete(s.id);
    changed();
  }
}

/** The operation in progress on a sandbox in this tab, if any. */
export function pendingOp(id) {
  return inflight.get(id) ?? null;
}

/** A one-click operation: no question asked, progress on the button, a toast at the end. */
function quick(verb, busyLabel, done, call) {
  return async (s, after) => {
    try {
      await track(s, sandboxActions.find((a) => a.busy === busyLabel), () => call(s.id));
      toast(`Sandbox ${s.id} ${done}.`);
    } catch (err) {
      toast(`Could not ${verb} ${s.id}: ${errorText(err)}`, 'error');
    } finally {
      after?.();
    }
  };
}

export const sandboxActions = [
  {
    id: 'pause',
    label: 'Pause',
    busy: 'Pausing',
    icon: 'pause',
    when: (s) => s.status === 'running',
    run: quick('pause', 'Pausing', 'paused; its memory is saved on its host', (id) => api.pauseSandbox(id)),
  },
  {
    id: 'resume',
    label: 'Resume',
    busy: 'Resuming',
    icon: 'play',
    when: (s) => s.status === 'paused',
    run: quick('resume', 'Resuming', 'is running again', (id) => api.resumeSandbox(id)),
  },
  {
    id: 'snapshot',
    label: 'Snapshot',
    busy: 'Snapshotting',
    icon: 'camera',
    when: (s) => s.status === 'running' || s.status === 'paused',
    run: (s, after) => snapshotDialog(s, after),
  },
  {
    id: 'stop',
    label: 'Stop',
    icon: 'square',
    variant: 'danger',
    when: (s) => LIVE.includes(s.status),
    run: (s, done) =>
      confirmDialog({
        title: 'Stop this sandbox?',
        message: h('span', {}, 'Sandbox ', h('code', {}, s.id), ' is destroyed on its host, with everything in it. This cannot be undone.'),
        confirmLabel: 'Stop sandbox',
        busyLabel: 'Stopping…',
        danger: true,
        action: () => api.deleteSandbox(s.id),
        onDone: () => {
          toast(`Sandbox ${s.id} stopped.`);
          done?.();
        },
      }),
  },
];

/**
 * The buttons for one sandbox; `done` runs after an action changed it (e.g. reloads the page's
 * data). While an operation runs, its button shows the progress and the others wait (Stop stays
 * available). Busy buttons stay focusable (aria-disabled), so keyboard focus is not lost.
 */
export function actionButtons(sandbox, done, { small = true, compact = false } = {}) {
  const op = pendingOp(sandbox.id);
  return sandboxActions
    .filter((a) => a.when(sandbox) || op?.action === a)
    .map((a) => {
      const label = `${a.label} ${sandbox.id}`;
      // Compact buttons (table rows on wide screens) show the icon only; the name is the tooltip.
      const cls = compact && 'btn-compact';
      if (op?.action === a) {
        const text = h('span', { dataset: { opSince: String(op.started), opLabel: a.busy } }, opText(a.busy, op.started));
        return h('button', { type: 'button', class: ['btn', `btn-${a.variant ?? 'secondary'}`, small && 'btn-sm', cls], 'aria-label': label, title: compact ? `${a.busy}…` : null, 'aria-disabled': 'true', 'aria-busy': 'true' }, h('span', { class: 'spinner', 'aria-hidden': 'true' }), text);
      }
      const waiting = op && a.id !== 'stop';
      const btn = button(a.label, {
        variant: a.variant ?? 'secondary',
        icon: a.icon,
        small,
        'aria-label': label,
        title: compact ? a.label : null,
        'aria-disabled': waiting ? 'true' : null,
        onclick: () => !waiting && a.run(sandbox, done),
      });
      if (cls) btn.classList.add(cls);
      return btn;
    });
}

const STATUS_KIND = { running: 'ok', pending: 'wait', starting: 'wait', paused: 'info', stopped: 'off', error: 'bad', missing: 'warn' };

/** The status as a badge; with the sandbox's id, an operation in flight shows instead ("pausing…"). */
export function statusBadge(status, id) {
  const op = id && pendingOp(id);
  if (op) return badge(`${op.action.busy.toLowerCase()}…`, 'wait');
  return badge(status, STATUS_KIND[status] ?? 'off');
}

export function isLive(s) {
  return LIVE.includes(s.status);
}

// ---- Snapshot

const TEMPLATE_NAME = /^[A-Za-z0-9._-]{1,64}$/;

function defaultSnapshotName() {
  const d = new Date();
  const p = (n) => String(n).padStart(2, '0');
  return `snap-${d.getFullYear()}${p(d.getMonth() + 1)}${p(d.getDate())}-${p(d.getHours())}${p(d.getMinutes())}`;
}

/** Asks for a name, then keeps the sandbox's memory and disk as a team template. */
function snapshotDialog(s, after) {
  openDialog({
    title: 'Take a snapshot',
    build(close) {
      const name = h('input', { name: 'name', required: true, maxlength: 64, spellcheck: 'false', autocomplete: 'off', class: 'mono', value: defaultSnapshotName() });
      const alert = alertBox();
      const ok = button('Take snapshot', { variant: 'primary', type: 'submit' });
      const cancel = button('Cancel', { onclick: close });
      let overwrite = false;
      const setOverwrite = (on) => {
        overwrite = on;
        ok.className = `btn ${on ? 'btn-danger' : 'btn-primary'}`;
        ok.querySelector('span').textContent = on ? 'Replace template' : 'Take snapshot';
      };
      name.addEventListener('input', () => {
        if (overwrite) {
          setOverwrite(false);
          alert.clear();
        }
      });
      const form = h(
        'form',
        {
          class: 'stack',
          novalidate: true,
          async onsubmit(e) {
            e.preventDefault();
            const n = name.value.trim();
            if (!TEMPLATE_NAME.test(n)) {
              name.setAttribute('aria-invalid', 'true');
              name.focus();
              return alert.show('The name is 1 to 64 letters, digits, ".", "_" or "-".');
            }
            name.removeAttribute('aria-invalid');
            alert.clear();
            name.readOnly = true;
            cancel.disabled = true;
            try {
              const t = await busy(ok, (sec) => (sec ? `Saving… ${sec}s` : 'Saving…'), () => track(s, sandboxActions.find((a) => a.id === 'snapshot'), () => api.snapshot(s.id, n, overwrite)));
              close();
              toast(h('span', {}, `Snapshot ${t.name} saved${t.size_bytes ? ` (${bytes(t.size_bytes)})` : ''}. `, h('a', { href: '/templates' }, 'See templates')));
              after?.();
            } catch (err) {
              if (err.code === 'already_exists' && !overwrite) {
                alert.show(`Your team already has a template named ${n}. Replace it with this snapshot, or choose another name.`, 'warn');
                setOverwrite(true);
                ok.focus();
              } else {
                alert.show(err);
                markField(form, err);
              }
            } finally {
              name.readOnly = false;
              cancel.disabled = false;
            }
          },
        },
        h(
          'p',
          {},
          'Keeps the memory and disk of ',
          h('code', {}, s.id),
          ' as a template of your team. New sandboxes started from it begin exactly where this one is now, on the same host',
          s.host_id ? [' (', h('code', {}, s.host_id), ')'] : '',
          '. The sandbox halts for a moment while it is saved, then goes on as it was.',
        ),
        field('Template name', name, 'Letters, digits, ".", "_" or "-"; at most 64.'),
        alert,
        h('div', { class: 'actions' }, cancel, ok),
      );
      return form;
    },
  });
}
