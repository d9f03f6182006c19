// Sync and health: each sync peer's state, cursor lag and last error (`siot sync status`), and
// the instance's counters (`siot stats`), from /v1/ui/status; refreshed every 5 s while shown.
import { useEffect, useState } from 'preact/hooks';
import { get } from './api.js';
import { Index } from './session.js';
import { ago, formatTime, html, timeMs } from './util.js';

const REFRESH_MS = 5000;

// A peer by the name of its sync node (an upstream) or its root node (an edge), else its id.
function peerName(p) {
  const named = Index.state.nodes.get(p.node)?.description || Index.state.nodes.get(p.peer)?.description;
  return named || p.peer || 'upstream (not reached yet)';
}

function Peers({ sync }) {
  const peers = sync?.peers || [];
  if (!peers.length) return html`<p class="muted">No sync peers: this instance has no upstream and no edge has attached.</p>`;
  return html`<div class="table-wrap"><table class="peers">
    <thead><tr><th scope="col">Peer</th><th scope="col">Role</th><th scope="col">State</th><th scope="col">Lag (rows)</th>
      <th scope="col">Cursors out / in</th><th scope="col">Last sync</th><th scope="col">Digest</th><th scope="col">Last error</th></tr></thead>
    <tbody>${peers.map((p) => html`<tr>
      <th scope="row">${peerName(p)}<br /><span class="muted small-text mono">${p.uri || p.peer}</span></th>
      <td>${p.role}</td>
      <td><span class=${`state ${p.state === 'connected' ? 'on' : p.state === 'disabled' ? '' : 'bad'}`}>${p.state}</span></td>
      <td class="num">${p.backlog ?? '—'}</td>
      <td class="num">${p.outCursor} / ${p.inCursor}</td>
      <td class="nowrap">${ago(timeMs(p.lastSyncTime))}</td>
      <td>${p.digestOk === null || p.digestOk === undefined ? '—' : p.digestOk ? 'match' : html`<span class="error">differs</span>`}</td>
      <td>${p.lastError ? html`<span class="error">${p.lastError}</span><br /><span class="muted small-text">${formatTime(timeMs(p.lastErrorTime))}</span>` : '—'}</td>
    </tr>`)}</tbody></table></div>`;
}

function Counters({ stats }) {
  if (!stats) return null;
  const flat = [];
  const errors = [];
  for (const [k, v] of Object.entries(stats)) {
    if (k === 'ok') continue;
    if (k === 'errors' && v && typeof v === 'object') {
      for (const [node, n] of Object.entries(v)) errors.push([node, n]);
    } else if (v && typeof v === 'object') {
      for (const [k2, v2] of Object.entries(v)) flat.push([`${k}.${k2}`, v2]);
    } else flat.push([k, v]);
  }
  return html`<div class="table-wrap"><table class="counters"><tbody>
    ${flat.map(([k, v]) => html`<tr><th scope="row" class="mono">${k}</th><td class="num">${typeof v === 'object' ? JSON.stringify(v) : String(v)}</td></tr>`)}
  </tbody></table></div>
  <h3>Refused writes per node</h3>
  ${errors.length === 0 ? html`<p class="muted">None since start.</p>` : html`<div class="table-wrap"><table><tbody>
    ${errors.map(([node, n]) => html`<tr><th scope="row"><a href=${`#/node/${encodeURIComponent(node)}`}>${Index.state.nodes.get(node)?.description || node}</a></th>
      <td class="num">${typeof n === 'object' ? JSON.stringify(n) : n}</td></tr>`)}</tbody></table></div>`}`;
}

export function HealthPage() {
  const [status, setStatus] = useState(null);
  const [error, setError] = useState('');
  const [at, setAt] = useState(0);
  useEffect(() => {
    let stopped = false;
    const load = () =>
      get('/v1/ui/status')
        .then((s) => {
          if (stopped) return;
          setStatus(s);
          setError('');
          setAt(Date.now());
        })
        .catch((err) => !stopped && setError(err.message));
    load();
    const t = setInterval(load, REFRESH_MS);
    return () => {
      stopped = true;
      clearInterval(t);
    };
  }, []);
  return html`<section class="health-page">
    <h1>Sync & health</h1>
    ${error && html`<p class="error" role="alert">${error}</p>`}
    ${!status && !error && html`<p class="loading">Loading…</p>`}
    ${status && html`
      <p class="muted">Instance <span class="mono">${status.sync?.instance || status.stats?.instance || ''}</span> ·
        log at seq ${status.sync?.lastSeq ?? status.stats?.lastSeq ?? '—'} · updated ${formatTime(at)}</p>
      <h2>Sync peers</h2>
      ${status.syncError ? html`<p class="error">${status.syncError}</p>` : html`<${Peers} sync=${status.sync} />`}
      <h2>Counters</h2>
      ${status.statsError ? html`<p class="error">${status.statsError}</p>` : html`<${Counters} stats=${status.stats} />`}`}
  </section>`;
}
