// History charts (uPlot): one or more numeric points of a node over 1 h, 24 h, 7 d, 30 d or a
// chosen range, drawn from bucketed history (`every=`) so no series holds more than MAX_POINTS,
// extended live from the change stream; CSV download of what is shown.
import { useEffect, useRef, useState } from 'preact/hooks';
import { getNode, history, stream } from './api.js';
import { bucketFor, download, formatTime, html, isDeleted, isNumeric, label, pointId, timeMs } from './util.js';

export const MAX_POINTS = 1000;
const RANGES = [['1h', 3600], ['24h', 86400], ['7d', 7 * 86400], ['30d', 30 * 86400]];
const COLORS = ['#5aa9ff', '#ffb454', '#7ee081', '#f07178', '#c792ea', '#4dd0e1', '#e6db74', '#ff8a65'];

let uplotLoading = null;
function loadUplot() {
  if (!uplotLoading) {
    uplotLoading = new Promise((resolve, reject) => {
      const css = document.createElement('link');
      css.rel = 'stylesheet';
      css.href = new URL('../vendor/uPlot.min.css', import.meta.url).href;
      document.head.appendChild(css);
      const s = document.createElement('script');
      s.src = new URL('../vendor/uPlot.iife.min.js', import.meta.url).href;
      s.onload = () => resolve(window.uPlot);
      s.onerror = () => reject(new Error('could not load the chart library'));
      document.head.appendChild(s);
    });
  }
  return uplotLoading;
}

const splitId = (pid) => {
  const i = pid.lastIndexOf(':');
  return i < 0 ? [pid, '0'] : [pid.slice(0, i), pid.slice(i + 1)];
};

function toInputValue(ms) {
  const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60000);
  return d.toISOString().slice(0, 16);
}

// The range a query asks for: {startMs, endMs, live} (a relative range follows the clock).
function rangeOf(query) {
  const r = query.get('r') || '24h';
  if (r === 'custom') {
    const start = Number(query.get('from'));
    const end = Number(query.get('to'));
    if (start > 0 && end > start) return { r, startMs: start, endMs: end, live: end >= Date.now() };
  }
  const span = (RANGES.find(([n]) => n === r) || RANGES[1])[1];
  const now = Date.now();
  return { r: RANGES.some(([n]) => n === r) ? r : '24h', startMs: now - span * 1000, endMs: now, live: true };
}

// Buckets of every series -> uPlot's columns: x (s) and per series mean (+ min/max for one series).
function columns(series, buckets, withBand) {
  const xs = [...new Set(buckets.flatMap((b) => b.map((x) => x.t)))].sort((a, b) => a - b);
  const at = new Map(xs.map((x, i) => [x, i]));
  const cols = [xs];
  series.forEach((_s, i) => {
    const mean = new Array(xs.length).fill(null);
    const min = new Array(xs.length).fill(null);
    const max = new Array(xs.length).fill(null);
    for (const b of buckets[i]) {
      const j = at.get(b.t);
      mean[j] = b.mean;
      min[j] = b.min;
      max[j] = b.max;
    }
    cols.push(mean);
    if (withBand) cols.push(min, max);
  });
  return cols;
}

const num = (v) => (typeof v === 'boolean' ? (v ? 1 : 0) : typeof v === 'number' ? v : null);

function toBucket(b) {
  return { t: timeMs(b.time) / 1000, count: b.count, min: num(b.min), max: num(b.max), mean: num(b.mean), first: num(b.first), last: num(b.last) };
}

export function ChartPage({ id, query }) {
  const [node, setNode] = useState(null);
  const [error, setError] = useState('');
  const [info, setInfo] = useState('');
  const [custom, setCustom] = useState(null);
  const [generation, setGeneration] = useState(0); // bumped when the stream missed changes
  const box = useRef(null);
  const plot = useRef(null);
  const state = useRef(null);
  const ids = (query.get('p') || '').split(',').filter(Boolean);
  const range = rangeOf(query);
  const qs = query.toString();

  function go(changes) {
    const q = new URLSearchParams(query);
    for (const [k, v] of Object.entries(changes)) if (v === null) q.delete(k); else q.set(k, v);
    location.hash = `#/chart/${encodeURIComponent(id)}?${q}`;
  }

  useEffect(() => {
    getNode(id).then(setNode).catch((err) => setError(err.message));
  }, [id]);

  useEffect(() => {
    if (!ids.length) return;
    let stopped = false;
    let stopStream = null;
    const spanS = (range.endMs - range.startMs) / 1000;
    const { every, everyS } = bucketFor(spanS, MAX_POINTS);
    const series = ids.map(splitId);
    const withBand = series.length === 1;
    setError('');
    setInfo('Loading…');
    const began = performance.now();

    (async () => {
      const [uPlot, replies] = await Promise.all([
        loadUplot(),
        Promise.all(series.map(([type, key]) => history(id, {
          type, key, every, start: new Date(range.startMs).toISOString(), end: new Date(range.endMs).toISOString(),
        }))),
      ]);
      if (stopped || !box.current) return;
      const buckets = replies.map((r) => (r.buckets || []).map(toBucket));
      state.current = { buckets, series, everyS, withBand, every };
      const opts = {
        width: box.current.clientWidth,
        height: Math.max(220, Math.min(420, Math.round(window.innerHeight * 0.5))),
        series: [{ value: (_u, v) => (v == null ? '—' : formatTime(v * 1000)) }],
        axes: [axis(), axis()],
        scales: { x: { time: true } },
        cursor: { drag: { x: true, y: false } },
        legend: { live: true },
      };
      series.forEach(([type, key], i) => {
        const name = key === '0' ? type : `${type}[${key}]`;
        // A series of a few buckets (a point written rarely) is drawn as dots too, or a lone
        // value would not show at all.
        const sparse = buckets[i].length < 60;
        opts.series.push({
          label: `${name} (mean)`, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: sparse,
          points: { show: sparse, size: 6, fill: COLORS[i % COLORS.length] },
        });
        if (withBand) {
          opts.series.push({ label: 'min', stroke: 'transparent', points: { show: false } });
          opts.series.push({ label: 'max', stroke: 'transparent', points: { show: false } });
        }
      });
      if (withBand) opts.bands = [{ series: [3, 2], fill: 'rgba(90,169,255,0.15)' }];
      plot.current?.destroy();
      plot.current = new uPlot(opts, columns(series, buckets, withBand), box.current);
      box.current.dataset.points = String(Math.max(0, ...buckets.map((b) => b.length)));
      box.current.dataset.every = every;
      setInfo(`${every} buckets · ${buckets.reduce((n, b) => n + b.length, 0)} points drawn · ${Math.round(performance.now() - began)} ms`);

      if (range.live) {
        stopStream = stream(id, (change) => {
          if (change.node !== id || change.parent) return;
          let changed = false;
          for (const p of change.points) {
            const i = series.findIndex(([t, k]) => t === p.type && k === (p.key || '0'));
            const v = num(p.value);
            if (i < 0 || v === null || isDeleted(p)) continue;
            extend(state.current.buckets[i], timeMs(p.time) / 1000, v, everyS);
            changed = true;
          }
          if (!changed) return;
          const cutoff = Date.now() / 1000 - spanS;
          if (range.r !== 'custom') for (const b of state.current.buckets) while (b.length && b[0].t < cutoff) b.shift();
          plot.current.setData(columns(series, state.current.buckets, withBand));
          box.current.dataset.points = String(Math.max(0, ...state.current.buckets.map((b) => b.length)));
        }, undefined, () => setGeneration((g) => g + 1));
      }
    })().catch((err) => !stopped && setError(err.message));

    const ro = new ResizeObserver(() => box.current && plot.current?.setSize({ width: box.current.clientWidth, height: plot.current.height }));
    ro.observe(box.current);
    return () => {
      stopped = true;
      stopStream?.();
      ro.disconnect();
      plot.current?.destroy();
      plot.current = null;
    };
  }, [id, qs, generation]);

  function csv() {
    const st = state.current;
    if (!st) return;
    const names = st.series.map(([t, k]) => (k === '0' ? t : `${t}[${k}]`));
    const head = ['time', ...names.flatMap((n) => ['count', 'min', 'max', 'mean', 'first', 'last'].map((f) => `${n} ${f}`))];
    const xs = [...new Set(st.buckets.flatMap((b) => b.map((x) => x.t)))].sort((a, b) => a - b);
    const maps = st.buckets.map((b) => new Map(b.map((x) => [x.t, x])));
    const lines = [head.join(',')];
    for (const x of xs) {
      const cells = [new Date(x * 1000).toISOString()];
      for (const m of maps) {
        const b = m.get(x);
        cells.push(...['count', 'min', 'max', 'mean', 'first', 'last'].map((f) => (b && b[f] != null ? b[f] : '')));
      }
      lines.push(cells.join(','));
    }
    download(`${label(node) || id}-${st.every}.csv`.replace(/[^\w.-]+/g, '_'), lines.join('\n') + '\n');
  }

  const numeric = (node?.points || []).filter((p) => isNumeric(p) && !isDeleted(p));
  const toggle = (pid) => {
    const next = ids.includes(pid) ? ids.filter((x) => x !== pid) : [...ids, pid];
    go({ p: next.join(',') });
  };

  return html`<section class="chart-page">
    <p class="crumbs"><a href=${`#/node/${encodeURIComponent(id)}`}>← ${node ? label(node) : id}</a></p>
    <h1>History</h1>
    <div class="toolbar" role="group" aria-label="range">
      ${RANGES.map(([name]) => html`<button class=${range.r === name ? 'primary' : ''} aria-pressed=${range.r === name}
        onClick=${() => go({ r: name, from: null, to: null })}>${name}</button>`)}
      <button class=${range.r === 'custom' ? 'primary' : ''} aria-pressed=${range.r === 'custom'}
        onClick=${() => setCustom(custom ? null : { from: toInputValue(range.startMs), to: toInputValue(range.endMs) })}>Custom…</button>
      <button onClick=${csv} disabled=${!state.current}>Download CSV</button>
    </div>
    ${custom && html`<form class="toolbar" onSubmit=${(e) => {
      e.preventDefault();
      const from = new Date(custom.from).getTime();
      const to = new Date(custom.to).getTime();
      if (!(to > from)) return setError('the end must be after the start');
      setCustom(null);
      go({ r: 'custom', from: String(from), to: String(to) });
    }}>
      <label>From <input type="datetime-local" value=${custom.from} onInput=${(e) => setCustom({ ...custom, from: e.target.value })} /></label>
      <label>To <input type="datetime-local" value=${custom.to} onInput=${(e) => setCustom({ ...custom, to: e.target.value })} /></label>
      <button class="primary" type="submit">Show</button></form>`}
    ${error && html`<p class="error" role="alert">${error}</p>`}
    ${!ids.length && html`<p class="muted">Choose one or more points below.</p>`}
    <div class="chart" ref=${box} aria-label="chart"></div>
    <p class="muted small-text" aria-live="polite">${info} · ${formatTime(range.startMs, { seconds: false })} – ${range.live ? 'now (live)' : formatTime(range.endMs, { seconds: false })}</p>
    ${numeric.length > 0 && html`<fieldset class="series"><legend>Points on this chart</legend>
      ${numeric.map((p) => html`<label class="check"><input type="checkbox" checked=${ids.includes(pointId(p))}
        onChange=${() => toggle(pointId(p))} /> ${p.key && p.key !== '0' ? `${p.type}[${p.key}]` : p.type}</label>`)}
    </fieldset>`}
  </section>`;
}

function axis() {
  const color = getComputedStyle(document.documentElement).getPropertyValue('--muted').trim() || '#999';
  const grid = getComputedStyle(document.documentElement).getPropertyValue('--line').trim() || '#333';
  return { stroke: color, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
}

// A live value goes into the bucket it falls in (the last one, or a new one after it), so a
// live chart keeps the bucket width it was drawn with.
function extend(buckets, tS, v, everyS) {
  const start = Math.floor(tS / everyS) * everyS;
  const last = buckets[buckets.length - 1];
  if (last && last.t === start) {
    last.mean = (last.mean * last.count + v) / (last.count + 1);
    last.count += 1;
    last.min = Math.min(last.min, v);
    last.max = Math.max(last.max, v);
    last.last = v;
  } else if (!last || start > last.t) {
    buckets.push({ t: start, count: 1, min: v, max: v, mean: v, first: v, last: v });
  }
}
