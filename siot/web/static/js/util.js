// Shared helpers: the html template tag, points, values and times.
import { h } from 'preact';
import htm from 'htm';

export const html = htm.bind(h);

const NS_PER_MS = 1e6;

// A point's identity within a node.
export const pointId = (p) => `${p.type}:${p.key === '' || p.key === undefined ? '0' : p.key}`;
export const isDeleted = (p) => (p.tombstone || 0) % 2 === 1;

// Merge changed points into a node's list (the stream sends only what changed). A point the
// server deleted (odd tombstone) stays in the list: the page shows it as removed.
export function mergePoints(points, changed) {
  const byId = new Map(points.map((p) => [pointId(p), p]));
  for (const p of changed) byId.set(pointId(p), p);
  return [...byId.values()];
}

export function pointValue(points, type, key = '0') {
  const p = points?.find((q) => q.type === type && (q.key || '0') === key && !isDeleted(q));
  return p ? p.value : undefined;
}

export function keyed(points, type) {
  return (points || []).filter((p) => p.type === type && !isDeleted(p));
}

export const description = (node) => pointValue(node?.points, 'description') || '';

export function label(node) {
  return description(node) || node?.type || '';
}

// Edge state from a node read: deleted when the edge's tombstone is odd.
export const edgeDeleted = (node) => (pointValue(node?.edgePoints, 'tombstone') || 0) % 2 === 1;

// Point times are ns since the epoch: an int or an RFC 3339 string.
export function timeMs(t) {
  if (typeof t === 'string') return Date.parse(t);
  if (typeof t === 'number') return t / NS_PER_MS;
  return NaN;
}

const pad = (n, w = 2) => String(n).padStart(w, '0');
export function formatTime(ms, { seconds = true } = {}) {
  if (!Number.isFinite(ms) || ms <= 0) return '—';
  const d = new Date(ms);
  const date = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  const time = `${pad(d.getHours())}:${pad(d.getMinutes())}` + (seconds ? `:${pad(d.getSeconds())}` : '');
  return `${date} ${time}`;
}

export function ago(ms, now = Date.now()) {
  if (!Number.isFinite(ms) || ms <= 0) return '—';
  const s = Math.round((now - ms) / 1000);
  if (s < -1) return 'in the future';
  if (s < 5) return 'just now';
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

export function kindOf(value) {
  if (value === null || value === undefined) return 'nil';
  if (typeof value === 'boolean') return 'bool';
  if (typeof value === 'number') return Number.isInteger(value) ? 'int' : 'float';
  if (typeof value === 'string') return 'text';
  return 'json';
}

export function formatValue(value, max = 80) {
  let s;
  if (value === null || value === undefined) s = '—';
  else if (typeof value === 'boolean') s = value ? 'on' : 'off';
  else if (typeof value === 'number') s = Number.isInteger(value) ? String(value) : String(+value.toPrecision(6));
  else if (typeof value === 'string') s = value;
  else s = JSON.stringify(value);
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}

export const isNumeric = (p) => typeof p.value === 'number' || typeof p.value === 'boolean';

// Point types that describe a node rather than measure something: never its "main value".
const META = new Set([
  'description', 'model', 'tag', 'disabled', 'error', 'rejected', 'nodeType', 'tombstone',
  'passwordHash', 'firstName', 'lastName', 'notification', 'lastRun', 'activeChanged',
]);

// The one value the tree shows beside a node: its state for nodes that have one, else the
// point of a measuring kind written last.
export function mainValue(node) {
  const points = node?.points || [];
  const v = (type) => pointValue(points, type);
  const err = v('error');
  switch (node?.type) {
    case 'rule':
      if (v('disabled')) return { text: 'disabled' };
      return { text: v('active') ? 'active' : 'inactive', tone: v('active') ? 'on' : '', error: err };
    case 'user':
      return { text: v('role') || '' };
    case 'ingest':
    case 'archive':
    case 'db':
      return { text: v('state') || (v('disabled') ? 'disabled' : ''), error: err };
    case 'sync':
      return { text: v('disabled') ? 'disabled' : v('uri') || '', error: err };
    case 'msgService':
      return { text: v('service') || '' };
    case 'condition':
      return { text: v('conditionType') || 'pointValue' };
    case 'action':
    case 'actionInactive':
      return { text: v('action') || '' };
    default: {
      let best = null;
      for (const p of points) {
        if (META.has(p.type) || isDeleted(p)) continue;
        if (!best || timeMs(p.time) > timeMs(best.time)) best = p;
      }
      if (!best) return err ? { text: '', error: err } : null;
      const key = best.key && best.key !== '0' ? `[${best.key}]` : '';
      return { text: `${best.type}${key} ${formatValue(best.value, 40)}`, time: timeMs(best.time), error: err };
    }
  }
}

// Durations for history buckets, smallest first: a chart asks for the smallest that keeps a
// range under its point budget.
export const STEPS = [
  ['1s', 1], ['2s', 2], ['5s', 5], ['10s', 10], ['15s', 15], ['30s', 30], ['1m', 60], ['2m', 120],
  ['5m', 300], ['10m', 600], ['15m', 900], ['30m', 1800], ['1h', 3600], ['2h', 7200], ['3h', 10800],
  ['6h', 21600], ['12h', 43200], ['1d', 86400], ['2d', 172800], ['7d', 604800],
];

export function bucketFor(spanS, maxPoints) {
  // One bucket more than span/every may be cut at each end of the range.
  for (const [name, s] of STEPS) if (spanS / s + 2 <= maxPoints) return { every: name, everyS: s };
  const [name, s] = STEPS[STEPS.length - 1];
  return { every: name, everyS: s };
}

export function debounce(fn, ms) {
  let t = null;
  return (...args) => {
    clearTimeout(t);
    t = setTimeout(() => fn(...args), ms);
  };
}

export function download(filename, text, type = 'text/csv') {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = document.createElement('a');
  a.href = url;
  a.download = filename;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}
