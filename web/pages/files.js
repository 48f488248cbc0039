// The file browser of a running sandbox: list a folder and move around it, download a file (through
// a short-lived link the browser streams to disk), upload files (the raw bytes, PUT, one by one;
// also by dropping them on the panel), create folders, delete.

import { api, isAbort } from '../api.js';
import { bytes, dateTime, fileMode, joinPath, normalizePath, parentPath } from '../format.js';
import { alertBox, busy, button, confirmDialog, dataTable, emptyState, errorText, field, fill, h, icon, openDialog, toast } from '../ui.js';

const START = '/root';

export const filesPanel = {
  id: 'files',
  label: 'Files',
  icon: 'folder',
  render(s, ctx) {
    let sandbox = s;
    let cwd = null;
    let entries = [];
    let loaded = false;
    let seq = 0;

    const alert = alertBox();
    const note = h('p', { class: 'alert alert-info', hidden: true });
    const pathInput = h('input', { class: 'mono', name: 'path', 'aria-label': 'Folder path', spellcheck: 'false', autocomplete: 'off' });
    const crumbs = h('nav', { class: 'crumbs', 'aria-label': 'Current folder' });
    const upBtn = button('Up', { icon: 'up', small: true, 'aria-label': 'Up one folder', onclick: () => cwd && go(parentPath(cwd), { focus: true }) });
    const refreshBtn = button('Refresh', { icon: 'refresh', small: true, onclick: () => cwd && go(cwd, { button: refreshBtn }) });
    const mkdirBtn = button('New folder', { icon: 'plus', small: true, onclick: () => mkdirDialog() });
    const fileInput = h('input', { type: 'file', multiple: true, hidden: true, tabindex: '-1', 'aria-hidden': 'true', onchange: () => upload([...fileInput.files]) });
    const uploadBtn = button('Upload', { icon: 'upload', variant: 'primary', small: true, onclick: () => fileInput.click() });
    const progress = h('p', { class: 'muted small upload-status', role: 'status', 'aria-live': 'polite' });

    const table = dataTable({
      label: 'Files',
      empty: () => emptyState('This folder is empty', 'Upload files here (or drop them on this panel), or create a folder.'),
      columns: [
        { label: 'Name', cell: (e) => nameCell(e) },
        { label: 'Size', class: 'num', cell: (e) => (e.kind === 'file' ? bytes(e.size) : '—') },
        { label: 'Modified', class: 'col-opt', cell: (e) => dateTime(e.modified) },
        { label: 'Mode', class: 'col-opt', cell: (e) => h('span', { class: 'mono small' }, fileMode(e.mode, e.kind)) },
        {
          label: 'Actions',
          class: 'actions-cell',
          cell: (e) =>
            h(
              'div',
              { class: 'row-actions' },
              e.kind !== 'dir' && button('Download', { icon: 'download', small: true, 'aria-label': `Download ${e.name}`, onclick: (ev) => download(e, ev.currentTarget) }),
              button('Delete', { icon: 'trash', small: true, variant: 'danger', 'aria-label': `Delete ${e.name}`, onclick: () => remove(e) }),
            ),
        },
      ],
    });
    table.classList.add('files-table');

    function nameCell(e) {
      const ic = icon(e.kind === 'dir' ? 'folder' : e.kind === 'symlink' ? 'link' : 'file', `icon file-icon file-icon-${e.kind}`);
      const target = e.link_target ? h('span', { class: 'muted small' }, ` → ${e.link_target}`) : null;
      if (e.kind === 'dir' || e.kind === 'symlink') {
        return h('span', { class: 'file-name' }, ic, h('button', { type: 'button', class: 'link-btn mono', 'aria-label': e.kind === 'dir' ? `Open folder ${e.name}` : `Open ${e.name}`, onclick: () => openEntry(e) }, e.kind === 'dir' ? `${e.name}/` : e.name), target);
      }
      return h('span', { class: 'file-name' }, ic, h('span', { class: 'mono' }, e.name));
    }

    /** Lists a folder and makes it the current one; on failure the current one stays. */
    async function go(path, { focus = false, button: btn = null, fallback = null } = {}) {
      const my = ++seq;
      alert.clear();
      try {
        const call = () => api.listFiles(sandbox.id, path, { signal: ctx.signal });
        const r = btn ? await busy(btn, 'Loading…', call) : await call();
        if (my !== seq) return;
        cwd = r.path || path;
        entries = r.entries.slice().sort((a, b) => (a.kind === 'dir') === (b.kind === 'dir') ? a.name.localeCompare(b.name) : a.kind === 'dir' ? -1 : 1);
        loaded = true;
        show();
        if (focus) (table.querySelector('tbody button') ?? upBtn).focus({ preventScroll: true });
      } catch (err) {
        if (isAbort(err) || my !== seq) return;
        if (fallback && (err.status === 404 || err.status === 409)) return go(fallback);
        if (err.code === 'not_a_directory') return alert.show(`${path} is not a folder.`);
        if (err.status === 404) return alert.show(`There is no folder ${path} in the sandbox.`);
        alert.show(err);
      }
    }

    function show() {
      pathInput.value = cwd;
      upBtn.disabled = cwd === '/';
      const parts = cwd.split('/').filter(Boolean);
      fill(
        crumbs,
        h('button', { type: 'button', class: 'link-btn mono', onclick: () => go('/', { focus: true }), 'aria-current': parts.length ? null : 'location' }, '/'),
        parts.map((p, i) => {
          const path = `/${parts.slice(0, i + 1).join('/')}`;
          const last = i === parts.length - 1;
          return [i > 0 && h('span', { class: 'crumb-sep', 'aria-hidden': 'true' }, '/'), last ? h('span', { class: 'mono strong', 'aria-current': 'location' }, p) : h('button', { type: 'button', class: 'link-btn mono', onclick: () => go(path, { focus: true }) }, p)];
        }),
      );
      table.update(entries);
    }

    async function openEntry(e) {
      if (e.kind === 'dir') return go(e.path, { focus: true });
      // A symlink: a folder if it lists, else a file to download.
      try {
        await api.listFiles(sandbox.id, e.path, { signal: ctx.signal });
        go(e.path, { focus: true });
      } catch (err) {
        if (err.code === 'not_a_directory') download(e);
        else if (!isAbort(err)) alert.show(err);
      }
    }

    // The browser fetches a short-lived link itself and streams the file to disk: a page never
    // holds a large file in memory.
    async function download(e, btn) {
      alert.clear();
      try {
        const call = () => api.downloadUrl(sandbox.id, e.path, { signal: ctx.signal });
        const { url } = btn ? await busy(btn, 'Preparing…', call) : await call();
        const a = h('a', { href: url, download: e.name, hidden: true });
        document.body.append(a);
        a.click();
        a.remove();
      } catch (err) {
        if (!isAbort(err)) alert.show(`Could not download ${e.path}: ${errorText(err)}`);
      }
    }

    function remove(e) {
      const dir = e.kind === 'dir';
      confirmDialog({
        title: dir ? 'Delete this folder?' : 'Delete this file?',
        message: h('span', {}, h('code', {}, e.path), dir ? ' and everything in it are deleted from the sandbox.' : ' is deleted from the sandbox.', ' This cannot be undone.'),
        confirmLabel: dir ? 'Delete folder' : 'Delete file',
        busyLabel: 'Deleting…',
        danger: true,
        action: () => api.removeFile(sandbox.id, e.path, dir),
        onDone: () => {
          toast(`Deleted ${e.path}.`);
          go(cwd, { focus: true });
        },
      });
    }

    function mkdirDialog() {
      openDialog({
        title: 'New folder',
        build(close) {
          const name = h('input', { name: 'name', required: true, spellcheck: 'false', autocomplete: 'off', class: 'mono' });
          const err = alertBox();
          const ok = button('Create folder', { variant: 'primary', type: 'submit' });
          return h(
            'form',
            {
              class: 'stack',
              async onsubmit(e) {
                e.preventDefault();
                err.clear();
                const n = name.value.trim();
                if (!n || n === '.' || n === '..' || n.includes('/') || n.includes('\0')) {
                  name.setAttribute('aria-invalid', 'true');
                  return err.show('A folder name cannot be empty, "." or "..", or contain "/".');
                }
                try {
                  const path = joinPath(cwd, n);
                  await busy(ok, 'Creating…', () => api.makeDir(sandbox.id, path));
                  close();
                  toast(`Created ${path}.`);
                  go(cwd);
                } catch (e2) {
                  err.show(e2.code === 'exists' ? `${n} already exists here.` : e2);
                }
              },
            },
            h('p', { class: 'muted' }, 'In ', h('code', {}, cwd), '.'),
            field('Folder name', name),
            err,
            h('div', { class: 'actions' }, button('Cancel', { onclick: close }), ok),
          );
        },
      });
    }

    async function upload(files) {
      fileInput.value = '';
      if (!files.length || !cwd) return;
      const dir = cwd;
      const taken = new Set(entries.map((e) => e.name));
      const clash = files.filter((f) => taken.has(f.name));
      if (clash.length) {
        const dirs = clash.filter((f) => entries.find((e) => e.name === f.name)?.kind === 'dir');
        if (dirs.length) return alert.show(`${dirs.map((f) => f.name).join(', ')} ${dirs.length > 1 ? 'are folders' : 'is a folder'} here: rename the file first.`);
        confirmDialog({
          title: clash.length > 1 ? `Replace ${clash.length} files?` : 'Replace this file?',
          message: h('span', {}, clash.length > 1 ? 'These files exist in ' : 'This file exists in ', h('code', {}, dir), ': ', clash.map((f) => f.name).join(', '), '. Uploading replaces ', clash.length > 1 ? 'them.' : 'it.'),
          confirmLabel: 'Replace',
          danger: true,
          action: async () => {},
          onDone: () => send(files, dir),
        });
        return;
      }
      send(files, dir);
    }

    async function send(files, dir) {
      alert.clear();
      uploadBtn.disabled = true;
      const started = Date.now();
      let done = 0;
      const timer = setInterval(() => label(), 1000);
      const label = () => {
        const f = files[done];
        if (!f) return;
        const sec = Math.floor((Date.now() - started) / 1000);
        progress.textContent = `Uploading ${f.name} (${bytes(f.size)})${files.length > 1 ? `, ${done + 1} of ${files.length}` : ''}…${sec ? ` ${sec}s` : ''}`;
      };
      try {
        for (const f of files) {
          label();
          await api.writeFile(sandbox.id, joinPath(dir, f.name), f, { signal: ctx.signal });
          done++;
        }
        progress.textContent = '';
        toast(files.length > 1 ? `Uploaded ${files.length} files to ${dir}.` : `Uploaded ${files[0].name} to ${dir}.`);
      } catch (err) {
        progress.textContent = '';
        if (!isAbort(err)) {
          const f = files[done];
          const why = err.status === 413 ? 'it is larger than the server accepts' : errorText(err);
          alert.show(`Could not upload ${f.name}: ${why}${done ? ` (${done} of ${files.length} uploaded before it)` : ''}`);
        }
      } finally {
        clearInterval(timer);
        uploadBtn.disabled = sandbox.status !== 'running';
        if (cwd === dir) go(dir);
      }
    }

    const pathForm = h(
      'form',
      {
        class: 'path-form',
        onsubmit(e) {
          e.preventDefault();
          const p = normalizePath(pathInput.value, cwd ?? '/');
          go(p, { focus: true });
        },
      },
      pathInput,
      button('Go', { small: true, type: 'submit' }),
    );

    const body = h(
      'div',
      { class: 'stack files-body' },
      h('div', { class: 'files-bar' }, h('div', { class: 'files-nav' }, upBtn, pathForm), h('div', { class: 'files-actions' }, refreshBtn, mkdirBtn, uploadBtn, fileInput)),
      crumbs,
      progress,
      alert,
      h('div', { class: 'files-list' }, table),
    );
    const el = h('div', { class: 'stack files-panel' }, note, body);

    // Dropping files on the panel uploads them into the current folder.
    el.addEventListener('dragover', (e) => {
      if (!loaded || sandbox.status !== 'running' || !e.dataTransfer?.types.includes('Files')) return;
      e.preventDefault();
      el.classList.add('drop-target');
    });
    el.addEventListener('dragleave', (e) => {
      if (!el.contains(e.relatedTarget)) el.classList.remove('drop-target');
    });
    el.addEventListener('drop', (e) => {
      el.classList.remove('drop-target');
      if (!e.dataTransfer?.files.length || sandbox.status !== 'running') return;
      e.preventDefault();
      upload([...e.dataTransfer.files]);
    });

    el._update = (next) => {
      const was = sandbox.status;
      sandbox = next;
      const running = next.status === 'running';
      note.hidden = running;
      note.textContent = running ? '' : `Files can be browsed while the sandbox runs; it is ${next.status}.`;
      body.hidden = !running;
      uploadBtn.disabled = !running || progress.textContent !== '';
      // Back to running (e.g. resumed) while this tab is open: read the folder again.
      if (running && was !== 'running' && el.closest('[hidden]') === null) go(cwd ?? START, { fallback: cwd ? null : '/' });
    };
    el._shown = () => {
      if (!loaded && sandbox.status === 'running') go(START, { fallback: '/' });
    };
    el._update(s);
    return el;
  },
  update(el, s) {
    el._update(s);
  },
  shown(el) {
    el._shown();
  },
};
