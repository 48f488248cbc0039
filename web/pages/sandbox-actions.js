// What a person can do to a sandbox, shared by the list's rows and the detail page. Each action
// says when it applies; pause, resume and snapshot join this list when their API routes exist.

import { api } from '../api.js';
import { badge, button, confirmDialog, h, toast } from '../ui.js';

const LIVE = ['pending', 'starting', 'running', 'paused', 'missing'];

export const sandboxActions = [
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

/** The buttons for one sandbox; `done` runs after an action changed it. */
export function actionButtons(sandbox, done, { small = true } = {}) {
  return sandboxActions
    .filter((a) => a.when(sandbox))
    .map((a) => button(a.label, { variant: a.variant ?? 'secondary', icon: a.icon, small, 'aria-label': `${a.label} ${sandbox.id}`, onclick: () => a.run(sandbox, done) }));
}

const STATUS_KIND = { running: 'ok', pending: 'wait', starting: 'wait', paused: 'info', stopped: 'off', error: 'bad', missing: 'warn' };

export function statusBadge(status) {
  return badge(status, STATUS_KIND[status] ?? 'off');
}

export function isLive(s) {
  return LIVE.includes(s.status);
}
