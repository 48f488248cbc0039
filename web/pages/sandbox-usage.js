// A sandbox's usage: CPU and memory over the last minutes as charts, and its disk, from the
// samples its host takes every few seconds (GET /v1/sandboxes/{id}/metrics). Refreshes itself
// while the sandbox runs; an ended sandbox's samples went with it.

import { api, isAbort } from '../api.js';
import { bytes } from '../format.js';
import { lineChart } from '../chart.js';
import { alertBox, card, h } from '../ui.js';

const REFRESH_MS = 5000;
/** How far back the charts look, seconds; a younger sandbox's charts start with its first
 * sample, but span at least MIN_SPAN. */
const SPAN = 15 * 60;
const MIN_SPAN = 60;

const pct = (v) => `${Math.round(v)}%`;

export function usageCard(initial, ctx) {
  let s = initial;
  let loading = false;
  const cpu = lineChart({ title: 'CPU', format: pct, kind: 'cpu' });
  const mem = lineChart({ title: 'Memory', format: bytes, kind: 'memory' });
  const disk = h('p', { class: 'muted small usage-disk' });
  const note = h('p', { class: 'muted small' });
  const alert = alertBox();
  const charts = h('div', { class: 'charts' }, cpu, mem);

  const live = () => ['running', 'paused', 'missing'].includes(s.status);

  async function load() {
    if (loading || !live()) return;
    loading = true;
    try {
      const to = Math.floor(Date.now() / 1000);
      const list = await api.sandboxMetrics(s.id, to - SPAN, { signal: ctx.signal });
      const from = Math.min(list[0]?.timestamp ?? to, to - MIN_SPAN);
      alert.clear();
      const gap = list.length > 1 ? Math.max(15, 3 * medianStep(list)) : 15;
      cpu.update(list.map((m) => [m.timestamp, m.cpu_used_pct]), { from, to, max: 100, gap });
      const last = list[list.length - 1];
      mem.update(list.map((m) => [m.timestamp, m.mem_used]), { from, to, max: last?.mem_total ?? 0, gap });
      disk.textContent = last ? `Disk: ${bytes(last.disk_used)} used of ${bytes(last.disk_total)}. Memory: ${bytes(last.mem_used)} used of ${bytes(last.mem_total)} (${bytes(last.mem_cache)} cache).` : '';
      note.textContent = list.length ? `Up to the last ${SPAN / 60} minutes, sampled every few seconds while the sandbox runs.` : 'No samples yet: a running sandbox gets one every few seconds.';
    } catch (err) {
      if (!isAbort(err)) alert.show(err);
    } finally {
      loading = false;
    }
  }

  function update(next) {
    s = next;
    el.hidden = !live();
  }

  const el = card('Usage', note, charts, disk, alert);
  el.dataset.panel = 'usage';
  update(s);
  load();
  ctx.every(REFRESH_MS, load);
  return Object.assign(el, { update });
}

/** The usual time between two samples (the host's sample interval), seconds. */
function medianStep(list) {
  const steps = list.slice(1).map((m, i) => m.timestamp - list[i].timestamp).sort((a, b) => a - b);
  return steps[Math.floor(steps.length / 2)] || 5;
}
