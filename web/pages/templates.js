// Templates: the base images the hosts build (minimal, debian; on how many hosts) and the team's
// own snapshots (delete, launch). Platform admins can build the debian base template on every
// regular host and follow its progress.

import { api, isAbort } from '../api.js';
import { ago, bytes, mib } from '../format.js';
import { alertBox, badge, busy, button, card, confirmDialog, dataTable, emptyState, errorText, fill, h, pageHeader, toast } from '../ui.js';
import { currentTeam, hasTeam, store } from '../store.js';
import { createSandboxDialog } from './sandboxes.js';

const REFRESH_MS = 5000;
const BUILD_POLL_MS = 2000;
const BUILDABLE = 'debian';
const BASE_ABOUT = {
  minimal: 'busybox and the guest program; boots fastest.',
  debian: 'Debian with python3 (built with debootstrap).',
  base: "Debian with bash, python3, pip, git, curl, sudo and the user 'user': E2B's default template (sandboxctl template build base).",
};

export default {
  title: 'Templates',
  render(ctx) {
    let all = [];
    const alert = alertBox();
    const noTeam = !hasTeam();
    const admin = Boolean(store.me?.is_admin);

    const launch = (t) =>
      createSandboxDialog({
        preset: { template: t.name, vcpus: t.vcpus ?? undefined, memory_mb: t.memory_mb ?? undefined },
        onCreated: (s) => ctx.app.navigate(`/sandboxes/${s.id}`),
      });

    const baseTable = dataTable({
      label: 'Base templates',
      empty: () => emptyState('No base template is ready', 'Hosts build the minimal template when their agent starts; none is online and ready yet.'),
      columns: [
        { label: 'Name', cell: (t) => h('span', { class: 'mono strong' }, t.name) },
        { label: 'What is in it', class: 'col-opt wrap', cell: (t) => BASE_ABOUT[t.name] ?? '—' },
        { label: 'Hosts', cell: (t) => `on ${t.hosts ?? 0} host${t.hosts === 1 ? '' : 's'}` },
        { label: 'Actions', class: 'actions-cell', cell: (t) => h('div', { class: 'row-actions' }, button('Launch', { icon: 'play', small: true, disabled: noTeam, 'aria-label': `Launch a sandbox from ${t.name}`, onclick: () => launch(t) })) },
      ],
    });

    const snapTable = dataTable({
      label: 'Snapshots',
      empty: () => emptyState('No snapshots yet', 'Take one from a running or paused sandbox (its Snapshot button): new sandboxes then start exactly where it was.'),
      columns: [
        { label: 'Name', cell: (t) => h('div', {}, h('div', { class: 'mono strong' }, t.name), h('div', { class: 'mono small muted' }, t.id)) },
        {
          label: 'Taken from',
          class: 'col-opt',
          cell: (t) =>
            h(
              'div',
              {},
              t.source_sandbox_id ? h('a', { href: `/sandboxes/${t.source_sandbox_id}`, class: 'mono small' }, t.source_sandbox_id) : t.kind === 'image' ? h('span', { class: 'small' }, 'your root filesystem') : '—',
              t.host_id && h('div', { class: 'mono small muted' }, `on ${t.host_id}`),
            ),
        },
        { label: 'Resources', cell: (t) => (t.vcpus ? `${t.vcpus} vCPU · ${mib(t.memory_mb)}` : t.kind === 'image' ? 'any size' : '—') },
        { label: 'Size', class: 'num', cell: (t) => bytes(t.size_bytes) },
        { label: 'Created', cell: (t) => ago(t.created_at, '—') },
        {
          label: 'Actions',
          class: 'actions-cell',
          cell: (t) =>
            h(
              'div',
              { class: 'row-actions' },
              button('Launch', { icon: 'play', small: true, 'aria-label': `Launch a sandbox from ${t.name}`, onclick: () => launch(t) }),
              button('Delete', { icon: 'trash', small: true, variant: 'danger', 'aria-label': `Delete ${t.name}`, onclick: () => remove(t) }),
            ),
        },
      ],
    });

    function remove(t) {
      confirmDialog({
        title: 'Delete this snapshot?',
        message: h('span', {}, 'Template ', h('code', {}, t.name), ' is deleted, with its memory and disk files on ', t.host_id ? h('code', {}, t.host_id) : 'its host', '. New sandboxes can no longer start from it. This cannot be undone.'),
        confirmLabel: 'Delete snapshot',
        busyLabel: 'Deleting…',
        danger: true,
        action: () => api.deleteTemplate(t.id),
        onDone: () => {
          toast(`Deleted snapshot ${t.name}.`);
          load();
        },
      });
    }

    async function load() {
      if (noTeam) {
        baseTable.update([]);
        snapTable.update([]);
        return;
      }
      try {
        all = await api.templates({ signal: ctx.signal });
        alert.clear();
        baseTable.update(all.filter((t) => t.kind === 'base'));
        snapTable.update(all.filter((t) => t.kind !== 'base').sort((a, b) => (b.created_at ?? 0) - (a.created_at ?? 0)));
      } catch (err) {
        if (!isAbort(err)) alert.show(err);
      }
    }

    // ---- Building the debian base template (platform admins)

    const buildCard = h('section', { class: 'card', hidden: true, 'aria-labelledby': 'build-title' });
    const buildBtn = admin ? button(`Build ${BUILDABLE}`, { icon: 'hammer', onclick: () => startBuild() }) : null;
    let polling = false;

    async function startBuild() {
      try {
        const r = await busy(buildBtn, 'Starting…', () => api.buildTemplate(BUILDABLE, { signal: ctx.signal }));
        const failed = r.failed ?? [];
        toast(`Building ${BUILDABLE} on ${r.hosts.length} host${r.hosts.length === 1 ? '' : 's'}${failed.length ? `; ${failed.length} could not start` : ''}.`);
        showBuild({ hosts: [...r.hosts, ...failed] });
        pollBuild();
      } catch (err) {
        if (!isAbort(err)) toast(`Could not start the ${BUILDABLE} build: ${errorText(err)}`, 'error');
      }
    }

    /** Shows each host's build state; returns true while a build is still running somewhere. */
    function showBuild(status) {
      const hosts = status.hosts ?? [];
      const building = hosts.some((x) => x.status === 'building');
      buildCard.hidden = hosts.length === 0;
      fill(
        buildCard,
        h('h2', { class: 'card-title', id: 'build-title' }, `Building ${BUILDABLE}`),
        building && h('div', { class: 'progress' }, h('div', { class: 'progress-bar' })),
        h(
          'ul',
          { class: 'build-list', 'aria-live': 'polite' },
          hosts.map((x) =>
            h(
              'li',
              {},
              h('span', { class: 'mono small' }, x.host_id),
              x.status ? badge(x.status, { building: 'wait', ready: 'ok', failed: 'bad' }[x.status] ?? 'off') : badge('unknown', 'warn'),
              h('span', { class: x.error ? 'text-bad small' : 'muted small' }, x.error ?? x.progress ?? (x.status === 'ready' ? `ready${x.size_bytes ? `, ${bytes(x.size_bytes)}` : ''}` : '')),
            ),
          ),
        ),
        h('p', { class: 'muted small' }, building ? 'This takes several minutes per host; the page follows it. You can leave and come back.' : 'Sandboxes can start from it on the hosts where it is ready.'),
      );
      if (buildBtn) buildBtn.disabled = building;
      return building;
    }

    async function pollBuild() {
      if (polling) return;
      polling = true;
      try {
        for (;;) {
          const st = await api.buildStatus(BUILDABLE, { signal: ctx.signal });
          const running = showBuild(st);
          if (!running) {
            load();
            return;
          }
          await new Promise((r) => setTimeout(r, BUILD_POLL_MS));
          if (ctx.signal.aborted) return;
        }
      } catch (err) {
        if (!isAbort(err)) fill(buildCard, h('h2', { class: 'card-title' }, `Building ${BUILDABLE}`), h('p', { class: 'alert alert-error', role: 'alert' }, errorText(err)));
      } finally {
        polling = false;
      }
    }

    load();
    ctx.every(REFRESH_MS, load);
    // A build started earlier (or by another admin) shows here too.
    if (admin) {
      api
        .buildStatus(BUILDABLE, { signal: ctx.signal })
        .then((st) => (st.hosts ?? []).some((x) => x.status !== 'ready') && showBuild(st) && pollBuild())
        .catch(() => {});
    }

    return h(
      'div',
      { class: 'page' },
      pageHeader('Templates', { subtitle: currentTeam() ? `What sandboxes of ${currentTeam().name} start from.` : 'No active team', actions: [buildBtn] }),
      noTeam && h('p', { class: 'alert alert-info' }, 'Snapshots belong to a team: create one in the sidebar, or ask a team admin to add you.'),
      alert,
      buildCard,
      card('Base templates', h('p', { class: 'muted small' }, 'Built by the hosts themselves. A sandbox starts on a host that has its template.'), h('div', { class: 'card-flush-inner' }, baseTable)),
      card(
        'Snapshots',
        h('p', { class: 'muted small' }, 'Your team’s saved sandboxes (memory and disk), and images of your own root filesystems (', h('code', {}, 'sandboxctl template import NAME --from rootfs.tar'), '). A sandbox from one starts on the host that holds it.'),
        h('div', { class: 'card-flush-inner' }, snapTable),
      ),
    );
  },
};
