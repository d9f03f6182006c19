// A node's page: its points live from /v1/stream (no polling), typed editing, its children, add a
// child through a form per type, delete, move and mirror; a rule shows its state at a glance.
import { useEffect, useRef, useState } from 'preact/hooks';
import { deleteNode, getChildren, getNode, mirrorNode, moveNode, sendPoints, stream, undeleteNode } from './api.js';
import { AddChild, NodePicker, PointEditor } from './forms.js';
import { RuleStatus } from './rules.js';
import { Index } from './session.js';
import {
  ago, debounce, description, edgeDeleted, formatTime, formatValue, html, isDeleted, isNumeric,
  label, mainValue, mergePoints, pointId, timeMs,
} from './util.js';

const SECRET = new Set(['passwordHash', 'password', 'authToken', 'token']);

function useNow(ms = 5000) {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const t = setInterval(() => setNow(Date.now()), ms);
    return () => clearInterval(t);
  }, []);
  return now;
}

function canEdit(me, node) {
  if (me.role === 'view') return false;
  return node?.type !== 'user' || me.role === 'admin';
}

export function NodePage({ me, id, parent }) {
  const [node, setNode] = useState(null);
  const [children, setChildren] = useState([]);
  const [error, setError] = useState('');
  const [live, setLive] = useState('connecting');
  const [showDeleted, setShowDeleted] = useState(false);
  const [panel, setPanel] = useState('');
  const [message, setMessage] = useState('');
  const [selected, setSelected] = useState(new Set());
  const childRef = useRef([]);
  childRef.current = children;

  async function loadChildren() {
    setChildren(await getChildren(id, { deleted: showDeleted }));
  }

  useEffect(() => {
    let stopped = false;
    setNode(null);
    setError('');
    setPanel('');
    setSelected(new Set());
    const loadNode = () =>
      getNode(id, parent || undefined)
        .then((n) => !stopped && setNode(n))
        .catch((err) => !stopped && setError(err.message));
    loadNode();
    const reloadChildren = debounce(() => !stopped && loadChildren().catch(() => {}), 150);
    const stop = stream(
      id,
      (change) => {
        if (change.node === id && !change.parent) {
          setNode((n) => n && { ...n, points: mergePoints(n.points, change.points) });
        } else if (change.node === id && change.parent === (parent || undefined)) {
          setNode((n) => n && { ...n, edgePoints: mergePoints(n.edgePoints, change.points) });
        } else if (change.parent === id) {
          reloadChildren();
        } else if (!change.parent && childRef.current.some((c) => c.id === change.node)) {
          setChildren((cs) => cs.map((c) => (c.id === change.node ? { ...c, points: mergePoints(c.points, change.points) } : c)));
        }
      },
      setLive,
      () => {
        loadNode();
        reloadChildren();
      },
    );
    return () => {
      stopped = true;
      stop();
    };
  }, [id, parent]);

  useEffect(() => {
    loadChildren().catch((err) => setError(err.message));
  }, [id, showDeleted]);

  if (error) return html`<p class="error" role="alert">${error}</p>`;
  if (!node) return html`<p class="loading">Loading…</p>`;

  const editable = canEdit(me, node);
  const nodeParent = parent || node.parent;
  const points = node.points.filter((p) => !isDeleted(p)).sort((a, b) => (pointId(a) < pointId(b) ? -1 : 1));
  const chartable = points.filter(isNumeric);
  const chartHref = (ids) => `#/chart/${encodeURIComponent(id)}?p=${ids.map(encodeURIComponent).join(',')}`;
  const path = Index.path(id);

  async function act(fn, done) {
    setMessage('');
    try {
      await fn();
      if (done) setMessage(done);
    } catch (err) {
      setMessage(`Error: ${err.message}`);
    }
  }

  return html`<section class="node-page">
    <nav class="crumbs" aria-label="path">${path.slice(0, -1).map((n) => html`<a href=${`#/node/${encodeURIComponent(n.id)}`}>${n.description || n.type}</a> › `)}</nav>
    <div class="title-row">
      <h1>${label(node)}</h1>
      <span class="badge">${node.type}</span>
      ${edgeDeleted(node) && html`<span class="badge warn">deleted</span>`}
      <span class=${`live ${live === 'live' ? 'on' : ''}`} title=${live} aria-label=${`stream ${live}`}>${live === 'live' ? '● live' : '○ ' + live}</span>
    </div>
    <p class="muted mono">id ${node.id}${nodeParent ? html` · parent <a href=${`#/node/${encodeURIComponent(nodeParent)}`}>${Index.state.nodes.get(nodeParent)?.description || nodeParent}</a>` : ''}</p>

    ${editable && html`<div class="actions" role="toolbar" aria-label="node actions">
      <button onClick=${() => setPanel(panel === 'add' ? '' : 'add')} aria-expanded=${panel === 'add'}>Add child</button>
      <button onClick=${() => setPanel(panel === 'point' ? '' : 'point')} aria-expanded=${panel === 'point'}>Add point</button>
      ${nodeParent && html`<button onClick=${() => setPanel(panel === 'move' ? '' : 'move')} aria-expanded=${panel === 'move'}>Move</button>`}
      <button onClick=${() => setPanel(panel === 'mirror' ? '' : 'mirror')} aria-expanded=${panel === 'mirror'}>Mirror</button>
      ${nodeParent && !edgeDeleted(node) && html`<button class="danger" onClick=${() => setPanel(panel === 'delete' ? '' : 'delete')}>Delete</button>`}
      ${nodeParent && edgeDeleted(node) && html`<button onClick=${() => act(() => undeleteNode(id, nodeParent), 'Undeleted.')}>Undelete</button>`}
    </div>`}
    ${message && html`<p class=${message.startsWith('Error') ? 'error' : 'ok'} role="status">${message}</p>`}
    ${panel === 'add' && html`<${AddChild} parent=${id} parentType=${node.type} me=${me}
      onDone=${(newId) => { setPanel(''); if (newId) setMessage('Created.'); }} />`}
    ${panel === 'point' && html`<div class="card"><${PointEditor} nodeId=${id} onDone=${() => setPanel('')} /></div>`}
    ${panel === 'move' && html`<${MoveMirror} verb="Move" onPick=${(to) => act(async () => {
      await moveNode(id, nodeParent, to);
      location.hash = `#/node/${encodeURIComponent(id)}?parent=${encodeURIComponent(to)}`;
    }, 'Moved.')} />`}
    ${panel === 'mirror' && html`<${MoveMirror} verb="Mirror" onPick=${(to) => act(() => mirrorNode(id, to), 'Mirrored: the node now also sits under the chosen parent.')} />`}
    ${panel === 'delete' && html`<div class="card confirm" role="alertdialog" aria-label="Confirm delete">
      <p>Delete <strong>${label(node)}</strong> from this parent? It can be undeleted from the tree (Show deleted).</p>
      <button class="danger" onClick=${() => act(async () => {
        await deleteNode(id, nodeParent);
        location.hash = `#/node/${encodeURIComponent(nodeParent)}`;
      })}>Delete</button> <button onClick=${() => setPanel('')}>Cancel</button></div>`}

    ${node.type === 'rule' && html`<${RuleStatus} rule=${node} children=${children} />`}

    <h2>Points</h2>
    ${chartable.length > 0 && html`<p class="chart-links">
      <a class="button" href=${chartHref(selected.size ? [...selected] : chartable.map(pointId))}>
        Chart ${selected.size ? `${selected.size} selected` : 'all numeric points'}</a></p>`}
    <${PointsTable} nodeId=${id} points=${points} editable=${editable} selected=${selected} setSelected=${setSelected} chartHref=${chartHref} />

    <h2>Children</h2>
    <label class="check"><input type="checkbox" checked=${showDeleted} onChange=${(e) => setShowDeleted(e.target.checked)} /> Show deleted</label>
    <${Children} me=${me} parent=${id} children=${children} />
  </section>`;
}

function MoveMirror({ verb, onPick }) {
  const [to, setTo] = useState('');
  return html`<div class="card">
    <${NodePicker} label=${`${verb} under`} value=${to} onChange=${setTo} />
    <button class="primary" disabled=${!to} onClick=${() => onPick(to)}>${verb}</button>
  </div>`;
}

function PointsTable({ nodeId, points, editable, selected, setSelected, chartHref }) {
  const now = useNow();
  const [editing, setEditing] = useState('');
  const origins = Index.state.nodes;
  const toggle = (pid) => {
    const next = new Set(selected);
    if (next.has(pid)) next.delete(pid);
    else next.add(pid);
    setSelected(next);
  };
  if (!points.length) return html`<p class="muted">No points.</p>`;
  return html`<div class="table-wrap"><table class="points">
    <thead><tr><th scope="col"><span class="sr-only">chart</span></th><th scope="col">Point</th><th scope="col">Value</th>
      <th scope="col">Time</th><th scope="col">Origin</th>${editable && html`<th scope="col"><span class="sr-only">actions</span></th>`}</tr></thead>
    <tbody>${points.map((p) => {
      const pid = pointId(p);
      const t = timeMs(p.time);
      return html`<tr key=${pid} data-point=${pid}>
        <td>${isNumeric(p) && html`<input type="checkbox" aria-label=${`select ${pid} for a chart`} checked=${selected.has(pid)} onChange=${() => toggle(pid)} />`}</td>
        <th scope="row" class="mono">${p.type}${p.key && p.key !== '0' ? html`<span class="key">[${p.key}]</span>` : ''}</th>
        <td class="val">${editing === pid
          ? html`<${PointEditor} nodeId=${nodeId} point=${p} onDone=${() => setEditing('')} />`
          : html`<span key=${p.time} class="flash" data-value>${SECRET.has(p.type) ? '••••••' : formatValue(p.value, 200)}</span>`}</td>
        <td title=${formatTime(t)}><span class="nowrap">${ago(t, now)}</span><br /><span class="muted small-text">${formatTime(t)}</span></td>
        <td class="mono small-text">${p.origin ? origins.get(p.origin)?.description || p.origin.slice(0, 8) : html`<span class="muted">device</span>`}</td>
        ${editable && html`<td class="row-actions">
          ${isNumeric(p) && html`<a class="button small" href=${chartHref([pid])} aria-label=${`chart ${pid}`}>Chart</a>`}
          ${!SECRET.has(p.type) && html`<button class="small" onClick=${() => setEditing(pid)} aria-label=${`edit ${pid}`}>Edit</button>`}
          <button class="small ghost" aria-label=${`remove ${pid}`} onClick=${() => sendPoints(nodeId, [{ type: p.type, key: p.key || '0', tombstone: 1, value: p.value }])}>✕</button>
        </td>`}
        ${!editable && isNumeric(p) && html`<td><a class="button small" href=${chartHref([pid])}>Chart</a></td>`}
      </tr>`;
    })}</tbody></table></div>`;
}

// A long list shows its first CHILDREN_SHOWN until asked for all (the tree shows any number).
const CHILDREN_SHOWN = 200;

function Children({ parent, children }) {
  const [all, setAll] = useState(false);
  if (!children.length) return html`<p class="muted">No children.</p>`;
  const sorted = children.slice().sort((a, b) => (label(a).toLowerCase() < label(b).toLowerCase() ? -1 : 1));
  const shown = all ? sorted : sorted.slice(0, CHILDREN_SHOWN);
  return html`<ul class="children">${shown.map((c) => {
    const v = mainValue(c);
    return html`<li class=${edgeDeleted(c) ? 'deleted' : ''}>
      <a href=${`#/node/${encodeURIComponent(c.id)}?parent=${encodeURIComponent(parent)}`}>${description(c) || c.id}</a>
      <span class="badge">${c.type}</span>
      <span class=${`value${v?.tone === 'on' ? ' on' : ''}`}>${v?.text || ''}</span>
      ${v?.error && html`<span class="err-dot" title=${v.error}>!</span>`}
      ${edgeDeleted(c) && html`<span class="badge warn">deleted</span>`}
    </li>`;
  })}</ul>
  ${shown.length < sorted.length && html`<p><button onClick=${() => setAll(true)}>Show all ${sorted.length} children</button></p>`}`;
}
