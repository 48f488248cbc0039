// Line charts of our own: SVG drawn from a series of [unix seconds, value] points, no library.
// A chart has a fixed y range (0 to max), a time axis from `from` to `to`, and breaks its line
// where samples are missing (a paused sandbox has none for the paused time).

const NS = 'http://www.w3.org/2000/svg';
const W = 600;
const H = 170;
const PAD = { left: 56, right: 10, top: 10, bottom: 24 };

function svg(tag, attrs = {}, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

const clock = (t, seconds) => new Date(t * 1000).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: seconds ? '2-digit' : undefined });

/**
 * Splits points into runs without gaps: a gap is more than `gap` seconds between two samples.
 * @param {Array<[number, number]>} points sorted by time
 */
export function segments(points, gap) {
  const runs = [];
  let run = [];
  for (const p of points) {
    if (run.length && p[0] - run[run.length - 1][0] > gap) {
      runs.push(run);
      run = [];
    }
    run.push(p);
  }
  if (run.length) runs.push(run);
  return runs;
}

/**
 * A chart: a <figure> with a caption (title and the latest value) and an SVG whose lines are
 * <polyline>s (one per run of samples). `format(v)` writes values; `update(points, { from, to,
 * max, gap })` redraws it.
 */
export function lineChart({ title, format, kind = 'cpu' }) {
  const value = document.createElement('span');
  value.className = 'chart-value';
  const caption = document.createElement('figcaption');
  caption.append(Object.assign(document.createElement('span'), { className: 'chart-title', textContent: title }), value);
  const plot = svg('svg', { viewBox: `0 0 ${W} ${H}`, class: `chart chart-${kind}`, role: 'img', preserveAspectRatio: 'none' });
  const figure = document.createElement('figure');
  figure.className = 'chart-figure';
  figure.dataset.chart = kind;
  figure.append(caption, plot);

  function update(points, { from, to, max, gap = 15 }) {
    const top = max > 0 ? max : 1;
    const x = (t) => PAD.left + ((t - from) / Math.max(1, to - from)) * (W - PAD.left - PAD.right);
    const y = (v) => PAD.top + (1 - Math.min(Math.max(v, 0), top) / top) * (H - PAD.top - PAD.bottom);
    plot.replaceChildren();
    for (const f of [0, 0.5, 1]) {
      const gy = y(top * f);
      plot.append(svg('line', { x1: PAD.left, x2: W - PAD.right, y1: gy, y2: gy, class: 'chart-grid' }));
      plot.append(svg('text', { x: PAD.left - 6, y: gy + 4, class: 'chart-label', 'text-anchor': 'end' }, format(top * f)));
    }
    const seconds = to - from < 600;
    plot.append(svg('text', { x: PAD.left, y: H - 6, class: 'chart-label' }, clock(from, seconds)));
    plot.append(svg('text', { x: W - PAD.right, y: H - 6, class: 'chart-label', 'text-anchor': 'end' }, clock(to, seconds)));
    const shown = points.filter(([t]) => t >= from && t <= to);
    for (const run of segments(shown, gap)) {
      const coords = run.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`);
      if (run.length === 1) {
        const [cx, cy] = coords[0].split(',');
        plot.append(svg('circle', { cx, cy, r: 2.5, class: 'chart-dot' }));
      } else {
        const base = (H - PAD.bottom).toFixed(1);
        plot.append(svg('polygon', { points: `${x(run[0][0]).toFixed(1)},${base} ${coords.join(' ')} ${x(run[run.length - 1][0]).toFixed(1)},${base}`, class: 'chart-area' }));
        plot.append(svg('polyline', { points: coords.join(' '), class: 'chart-line' }));
      }
    }
    const last = shown[shown.length - 1];
    value.textContent = last ? format(last[1]) : 'no samples';
    plot.dataset.points = String(shown.length);
    plot.setAttribute('aria-label', last ? `${title} over time: ${shown.length} samples, latest ${format(last[1])}` : `${title}: no samples yet`);
  }

  return Object.assign(figure, { update });
}
