// DOM helpers and the few components every page uses: buttons with progress, dialogs, toasts,
// alerts, copy fields, status badges, empty states. Text always goes in as text (never as HTML).

import { ApiError, isAbort } from './api.js';

/** Builds an element: h('button', { class: 'btn', onclick: fn }, 'Save'). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = Array.isArray(v) ? v.filter(Boolean).join(' ') : v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k in el && typeof v !== 'string') el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replaces an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

// Icons: 24×24 stroke drawings, one path list each.
const ICONS = {
  logo: ['M12 2 3 7v10l9 5 9-5V7z', 'M3 7l9 5 9-5', 'M12 12v10'],
  box: ['M21 8 12 3 3 8v8l9 5 9-5z', 'M3 8l9 5 9-5', 'M12 13v8'],
  key: ['M15 7a4 4 0 1 1-4 4', 'M11 11 3 19v2h3v-2h2v-2h2l2.5-2.5', 'M15 7h.01'],
  user: ['M20 21v-2a4 4 0 0 0-4-4H8a4 4 0 0 0-4 4v2', 'M12 11a4 4 0 1 0 0-8 4 4 0 0 0 0 8z'],
  users: ['M16 21v-2a4 4 0 0 0-4-4H6a4 4 0 0 0-4 4v2', 'M9 11a4 4 0 1 0 0-8 4 4 0 0 0 0 8z', 'M22 21v-2a4 4 0 0 0-3-3.9', 'M16 3.1a4 4 0 0 1 0 7.8'],
  server: ['M4 3h16v7H4z', 'M4 14h16v7H4z', 'M8 6.5h.01', 'M8 17.5h.01'],
  plus: ['M12 5v14', 'M5 12h14'],
  copy: ['M9 9h11v11H9z', 'M5 15H4V4h11v1'],
  out: ['M9 21H5a2 2 0 0 1-2-2V5a2 2 0 0 1 2-2h4', 'M16 17l5-5-5-5', 'M21 12H9'],
  menu: ['M3 6h18', 'M3 12h18', 'M3 18h18'],
  play: ['M6 4l14 8-14 8z'],
  back: ['M19 12H5', 'M12 19l-7-7 7-7'],
  search: ['M11 19a8 8 0 1 0 0-16 8 8 0 0 0 0 16z', 'M21 21l-4.3-4.3'],
  trash: ['M3 6h18', 'M8 6V4h8v2', 'M19 6l-1 14H6L5 6'],
  square: ['M6 6h12v12H6z'],
  pause: ['M8 5v14', 'M16 5v14'],
  camera: ['M3 8h4l2-3h6l2 3h4v12H3z', 'M12 17a4 4 0 1 0 0-8 4 4 0 0 0 0 8z'],
  layers: ['M12 3 2 8l10 5 10-5z', 'M2 13l10 5 10-5', 'M2 18l10 5 10-5'],
  folder: ['M3 6h6l2 2h10v11H3z'],
  file: ['M6 3h8l4 4v14H6z', 'M14 3v4h4'],
  link: ['M10 14a4 4 0 0 0 6 0l3-3a4 4 0 0 0-6-6l-1 1', 'M14 10a4 4 0 0 0-6 0l-3 3a4 4 0 0 0 6 6l1-1'],
  upload: ['M12 16V4', 'M7 9l5-5 5 5', 'M4 20h16'],
  download: ['M12 4v12', 'M7 11l5 5 5-5', 'M4 20h16'],
  refresh: ['M20 11a8 8 0 1 0-2.3 5.7', 'M20 4v7h-7'],
  terminal: ['M3 4h18v16H3z', 'M7 9l3 3-3 3', 'M12 15h5'],
  up: ['M12 19V5', 'M5 12l7-7 7 7'],
  hammer: ['M14 4l6 6-3 3-6-6z', 'M11 7 3 15l3 3 8-8'],
};

export function icon(name, cls = 'icon') {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('class', cls);
  svg.setAttribute('aria-hidden', 'true');
  for (const d of ICONS[name] ?? []) {
    const p = document.createElementNS(ns, 'path');
    p.setAttribute('d', d);
    svg.append(p);
  }
  return svg;
}

/** A button; `variant` is primary | secondary | danger | ghost. */
export function button(label, { variant = 'secondary', icon: ic, small, type = 'button', ...attrs } = {}) {
  return h('button', { type, class: ['btn', `btn-${variant}`, small && 'btn-sm'], ...attrs }, ic && icon(ic), h('span', {}, label));
}

/**
 * Runs `fn` with the button disabled and a spinner in it; `busyLabel` may be a function of the
 * elapsed seconds (long operations show that they are alive). Returns fn's result.
 */
export async function busy(btn, busyLabel, fn) {
  const saved = [...btn.childNodes];
  const started = Date.now();
  const text = h('span');
  const label = () => (typeof busyLabel === 'function' ? busyLabel(Math.floor((Date.now() - started) / 1000)) : busyLabel);
  text.textContent = label();
  btn.disabled = true;
  btn.setAttribute('aria-busy', 'true');
  btn.replaceChildren(h('span', { class: 'spinner', 'aria-hidden': 'true' }), text);
  const tick = setInterval(() => (text.textContent = label()), 1000);
  try {
    return await fn();
  } finally {
    clearInterval(tick);
    btn.disabled = false;
    btn.removeAttribute('aria-busy');
    btn.replaceChildren(...saved);
  }
}

/** A human sentence for any error (API errors carry the server's message). */
export function errorText(err) {
  if (err instanceof ApiError) return err.message;
  return err?.message || String(err);
}

/** An alert area: show(err) / info(text) / clear(). Hidden while empty. */
export function alertBox() {
  const el = h('div', { class: 'alert', role: 'alert', hidden: true });
  return Object.assign(el, {
    show(err, kind = 'error') {
      if (isAbort(err)) return;
      el.className = `alert alert-${kind}`;
      el.textContent = typeof err === 'string' ? err : errorText(err);
      el.hidden = false;
    },
    info(text) {
      el.show(text, 'info');
    },
    clear() {
      el.hidden = true;
      el.textContent = '';
    },
  });
}

/** Marks the input named by an API error's `field` as invalid (and clears the others). */
export function markField(form, err) {
  for (const el of form.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
  const field = err?.field?.split('.')[0];
  const input = field && form.querySelector(`[name="${CSS.escape(field)}"]`);
  if (input) {
    input.setAttribute('aria-invalid', 'true');
    input.focus();
  }
}

/** A labelled form field; `input` is the control (its id is set here). */
let fieldSeq = 0;
export function field(label, input, hint) {
  const id = input.id || `f${++fieldSeq}`;
  input.id = id;
  const hintEl = hint && h('small', { class: 'hint', id: `${id}-hint` }, hint);
  if (hintEl) input.setAttribute('aria-describedby', hintEl.id);
  return h('div', { class: 'field' }, h('label', { for: id }, label), input, hintEl);
}

// ---- Toasts

let toasts;
export function toast(message, kind = 'success') {
  if (!toasts || !toasts.isConnected) {
    toasts = h('div', { class: 'toasts', role: 'status', 'aria-live': 'polite' });
    document.body.append(toasts);
  }
  const t = h('div', { class: `toast toast-${kind}` }, message);
  toasts.append(t);
  setTimeout(() => t.remove(), kind === 'error' ? 8000 : 4000);
}

export function clearToasts() {
  toasts?.replaceChildren();
}

// ---- Dialogs (native <dialog>: focus trap and Escape for free)

/**
 * Opens a modal. `build(close)` returns its body; returns { el, close }. `onClose` runs once.
 */
export function openDialog({ title, build, wide = false, onClose }) {
  const titleId = `dlg${++fieldSeq}`;
  const dlg = h('dialog', { class: ['dialog', wide && 'dialog-wide'], 'aria-labelledby': titleId });
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    if (dlg.open) dlg.close();
    dlg.remove();
    onClose?.();
  };
  dlg.addEventListener('close', close);
  dlg.addEventListener('cancel', (e) => {
    // Escape does not interrupt a running operation.
    if (dlg.querySelector('[aria-busy="true"]')) e.preventDefault();
  });
  const head = h('header', { class: 'dialog-head' }, h('h2', { id: titleId }, title), h('button', { type: 'button', class: 'btn btn-ghost btn-icon', 'aria-label': 'Close', onclick: () => !dlg.querySelector('[aria-busy="true"]') && close() }, '×'));
  dlg.append(head, h('div', { class: 'dialog-body' }, build(close)));
  document.body.append(dlg);
  dlg.showModal();
  const first = dlg.querySelector('.dialog-body input:not([type=hidden]):not([disabled]), .dialog-body select, .dialog-body textarea');
  first?.focus();
  return { el: dlg, close };
}

/**
 * Asks before doing something; `action()` runs with the button busy, errors stay in the dialog.
 * `details` is extra content (e.g. a list of affected things).
 */
export function confirmDialog({ title, message, details, confirmLabel = 'Confirm', danger = false, busyLabel = 'Working…', action, onDone }) {
  return openDialog({
    title,
    build(close) {
      const alert = alertBox();
      const ok = button(confirmLabel, { variant: danger ? 'danger' : 'primary', type: 'submit' });
      return h(
        'form',
        {
          class: 'stack',
          async onsubmit(e) {
            e.preventDefault();
            alert.clear();
            try {
              const result = await busy(ok, busyLabel, action);
              close();
              onDone?.(result);
            } catch (err) {
              alert.show(err);
            }
          },
        },
        h('p', {}, message),
        details,
        alert,
        h('div', { class: 'actions' }, button('Cancel', { onclick: close }), ok),
      );
    },
  });
}

/** A read-only value with a Copy button (works on plain-HTTP servers too). */
export function copyField(value, label = 'Value', { multiline = false } = {}) {
  const input = multiline
    ? h('textarea', { class: 'mono copy-value', readonly: true, rows: 3, 'aria-label': label, spellcheck: 'false' })
    : h('input', { class: 'mono copy-value', readonly: true, 'aria-label': label, spellcheck: 'false' });
  input.value = value;
  input.addEventListener('focus', () => input.select());
  const btn = button('Copy', { icon: 'copy', class: 'btn btn-secondary copy-btn' });
  btn.addEventListener('click', async () => {
    const ok = await copyText(value, input);
    const span = btn.querySelector('span');
    span.textContent = ok ? 'Copied' : 'Press Ctrl+C';
    setTimeout(() => (span.textContent = 'Copy'), 2000);
  });
  return h('div', { class: 'copy-field' }, input, btn);
}

async function copyText(text, input) {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return true;
    }
  } catch {
    // fall through to the selection copy
  }
  input.focus();
  input.select();
  try {
    return document.execCommand('copy');
  } catch {
    return false;
  }
}

// ---- Small pieces

export function badge(status, kind = status) {
  return h('span', { class: `badge badge-${kind}` }, h('span', { class: 'dot', 'aria-hidden': 'true' }), status);
}

export function emptyState(title, text, action) {
  return h('div', { class: 'empty' }, h('p', { class: 'empty-title' }, title), text && h('p', { class: 'muted' }, text), action);
}

export function card(title, ...children) {
  return h('section', { class: 'card' }, title && h('h2', { class: 'card-title' }, title), ...children);
}

/** The page header: title, optional subtitle, and actions on the right. */
export function pageHeader(title, { subtitle, actions = [] } = {}) {
  return h('header', { class: 'page-head' }, h('div', {}, h('h1', { tabindex: '-1' }, title), subtitle && h('p', { class: 'muted' }, subtitle)), h('div', { class: 'page-actions' }, actions));
}

/**
 * A table: columns [{ label, cell(row) → node|text, class }]; rows are re-rendered with update().
 */
export function dataTable({ columns, label, empty }) {
  const tbody = h('tbody');
  const table = h('table', { class: 'table', 'aria-label': label }, h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col', class: c.class }, c.label)))), tbody);
  const emptyEl = h('div', { class: 'table-empty', hidden: true });
  const wrap = h('div', { class: 'table-wrap' }, table, emptyEl);
  wrap.update = (rows) => {
    keepFocus(tbody, 'tr', () => tbody.replaceChildren(...rows.map((r) => h('tr', { dataset: { id: r.id ?? r.user_id ?? '' } }, columns.map((c) => h('td', { class: c.class, 'data-label': c.label }, c.cell(r)))))));
    table.hidden = rows.length === 0;
    emptyEl.hidden = rows.length !== 0;
    if (rows.length === 0) fill(emptyEl, typeof empty === 'function' ? empty() : empty);
  };
  return wrap;
}

/**
 * Re-renders part of the page without losing keyboard focus: if focus was inside `container`,
 * the same control (same aria-label, or same text) in the same scope (the closest `scopeSel`
 * element with the same data-id) gets it back; if that control is gone, the first button of the
 * scope does. For views that refresh themselves every few seconds.
 */
export function keepFocus(container, scopeSel, render) {
  const active = document.activeElement;
  if (!active || !container.contains(active) || active === container) return render();
  const scope = scopeSel ? active.closest(scopeSel) : null;
  const scopeId = scope?.dataset.id ?? null;
  const key = (el) => el.getAttribute('aria-label') || el.textContent.trim();
  const want = key(active);
  const tag = active.tagName;
  render();
  const scopes = scopeSel ? [...container.querySelectorAll(scopeSel)].filter((el) => (el.dataset.id ?? null) === scopeId) : [container];
  for (const sc of scopes) {
    const same = [...sc.querySelectorAll(tag)].find((el) => key(el) === want);
    const next = same ?? sc.querySelector('button, a[href], input, select');
    if (next) return next.focus({ preventScroll: true });
  }
}
