// The tree: the user's scope, expandable, each node with its type, description and main live
// value; deleted nodes behind a toggle (undelete there); search by description or id. Only the
// rows in view are rendered (a 5,000-node tree is as quick as a small one), and live values are
// read only for the parents whose children are in view.
import { useEffect, useMemo, useRef, useState } from 'preact/hooks';
import { getChildren, getNode, undeleteNode } from './api.js';
import { Index } from './session.js';
import { html, mainValue, mergePoints } from './util.js';

const ROW_PX = 36;
const OVERSCAN = 8;

// Points of the nodes shown, by id, loaded per parent and kept current from the stream.
const points = new Map();
const loadedParents = new Set();
const loading = new Set();
// Forgotten at logout: the next user of this browser reads its own.
Index.subscribe((state) => {
  if (!state.loaded) {
    points.clear();
    loadedParents.clear();
  }
});

function useIndex() {
  const [state, setState] = useState(Index.state);
  useEffect(() => Index.subscribe(setState), []);
  return state;
}

function sortKey(nodes, id) {
  const n = nodes.get(id);
  return (n?.description || '\uffff' + id).toLowerCase();
}

// The visible rows: a depth-first walk of the expanded nodes (a node under two parents shows
// under both; keys are paths).
function flatten(index, expanded, showDeleted) {
  const rows = [];
  const { nodes, children } = index;
  const walk = (id, parent, depth, key, deleted, path) => {
    const kids = (children.get(id) || []).filter((c) => showDeleted || !edgeOf(nodes, c, id)?.deleted);
    rows.push({ key, id, parent, depth, deleted, hasChildren: kids.length > 0 });
    if (!expanded.has(key) || path.has(id)) return;
    const inPath = new Set(path).add(id);
    const sorted = kids.slice().sort((a, b) => (sortKey(nodes, a) < sortKey(nodes, b) ? -1 : 1));
    for (const c of sorted) walk(c, id, depth + 1, `${key}/${c}`, edgeOf(nodes, c, id)?.deleted, inPath);
  };
  for (const r of index.roots) walk(r, '', 0, r, false, new Set());
  return rows;
}

const edgeOf = (nodes, id, parent) => nodes.get(id)?.edges.find((e) => e.parent === parent);

// Children of a parent with more than this are read one by one as they come into view, not
// all at once (5,000 children with their points are megabytes).
const WHOLE_PARENT_MAX = 200;

function loadPointsFor(rows, index, showDeleted, rerender) {
  const parents = new Set();
  for (const r of rows) {
    if (points.has(r.id) || loading.has(r.id)) continue;
    if (r.parent && !loadedParents.has(r.parent) && (index.children.get(r.parent)?.length || 0) <= WHOLE_PARENT_MAX) {
      parents.add(r.parent);
      continue;
    }
    loading.add(r.id);
    getNode(r.id, r.parent || undefined)
      .then((n) => {
        points.set(r.id, n.points);
        rerender();
      })
      .catch(() => {})
      .finally(() => loading.delete(r.id));
  }
  for (const p of parents) {
    if (loading.has(`children:${p}`)) continue;
    loading.add(`children:${p}`);
    getChildren(p, { deleted: showDeleted })
      .then((kids) => {
        for (const k of kids) points.set(k.id, k.points);
        loadedParents.add(p);
        rerender();
      })
      .catch(() => {})
      .finally(() => loading.delete(`children:${p}`));
  }
}

function useRerender() {
  const [, set] = useState(0);
  const pending = useRef(false);
  return () => {
    if (pending.current) return;
    pending.current = true;
    requestAnimationFrame(() => {
      pending.current = false;
      set((n) => n + 1);
    });
  };
}

export function TreePage({ me }) {
  const index = useIndex();
  const [expanded, setExpanded] = useState(() => new Set(JSON.parse(sessionStorage.getItem('siot.expanded') || 'null') || []));
  const [showDeleted, setShowDeleted] = useState(false);
  const [search, setSearch] = useState('');
  const [focus, setFocus] = useState(0);
  const [scrollTop, setScrollTop] = useState(0);
  const [height, setHeight] = useState(600);
  const listRef = useRef(null);
  const rerender = useRerender();

  // The scope roots start expanded.
  useEffect(() => {
    if (index.loaded && expanded.size === 0) setExpanded(new Set(index.roots));
  }, [index.loaded]);
  useEffect(() => sessionStorage.setItem('siot.expanded', JSON.stringify([...expanded])), [expanded]);
  useEffect(() => {
    const stopChanges = Index.onChange((change) => {
      if (!change.parent && points.has(change.node)) {
        points.set(change.node, mergePoints(points.get(change.node), change.points));
        rerender();
      }
    });
    // Changes were missed: read the values in view again.
    const stopResets = Index.onReset(() => {
      points.clear();
      loadedParents.clear();
      rerender();
    });
    return () => {
      stopChanges();
      stopResets();
    };
  }, []);
  useEffect(() => {
    const el = listRef.current;
    if (!el) return;
    const measure = () => setHeight(el.clientHeight);
    measure();
    const ro = new ResizeObserver(measure);
    ro.observe(el);
    return () => ro.disconnect();
  }, [listRef.current]);

  const q = search.trim().toLowerCase();
  const rows = useMemo(() => {
    if (!index.loaded) return [];
    if (!q) return flatten(index, expanded, showDeleted);
    const out = [];
    for (const n of index.nodes.values()) {
      if (!(n.description.toLowerCase().includes(q) || n.id.toLowerCase().includes(q))) continue;
      const edge = n.edges.find((e) => !e.deleted) || n.edges[0];
      if (edge.deleted && !showDeleted) continue;
      out.push({ key: n.id, id: n.id, parent: edge.parent, depth: 0, deleted: edge.deleted, hasChildren: false, found: true });
    }
    out.sort((a, b) => (sortKey(index.nodes, a.id) < sortKey(index.nodes, b.id) ? -1 : 1));
    return out;
  }, [index.version, index.loaded, expanded, showDeleted, q]);

  const first = Math.max(0, Math.floor(scrollTop / ROW_PX) - OVERSCAN);
  const last = Math.min(rows.length, Math.ceil((scrollTop + height) / ROW_PX) + OVERSCAN);
  const shown = rows.slice(first, last);
  // Values are read once the view stays put a moment (not for every row scrolled past).
  useEffect(() => {
    const t = setTimeout(() => loadPointsFor(shown, index, showDeleted, rerender), 120);
    return () => clearTimeout(t);
  }, [first, last, rows, showDeleted]);

  function toggle(row) {
    const next = new Set(expanded);
    if (next.has(row.key)) next.delete(row.key);
    else next.add(row.key);
    setExpanded(next);
  }

  function focusRow(i) {
    const n = Math.max(0, Math.min(rows.length - 1, i));
    setFocus(n);
    const el = listRef.current;
    if (el) {
      if (n * ROW_PX < el.scrollTop) el.scrollTop = n * ROW_PX;
      else if ((n + 1) * ROW_PX > el.scrollTop + el.clientHeight) el.scrollTop = (n + 1) * ROW_PX - el.clientHeight;
    }
    requestAnimationFrame(() => listRef.current?.querySelector(`[data-row="${n}"] a`)?.focus());
  }

  function onKey(e) {
    const row = rows[focus];
    if (!row) return;
    if (e.key === 'ArrowDown') focusRow(focus + 1);
    else if (e.key === 'ArrowUp') focusRow(focus - 1);
    else if (e.key === 'Home') focusRow(0);
    else if (e.key === 'End') focusRow(rows.length - 1);
    else if (e.key === 'ArrowRight' && row.hasChildren && !expanded.has(row.key)) toggle(row);
    else if (e.key === 'ArrowLeft' && expanded.has(row.key)) toggle(row);
    else return;
    e.preventDefault();
  }

  async function undelete(row) {
    await undeleteNode(row.id, row.parent);
  }

  if (index.error) return html`<p class="error" role="alert">Cannot load the tree: ${index.error}</p>`;
  if (!index.loaded) return html`<p class="loading">Loading the tree…</p>`;

  return html`<section class="tree-page">
    <div class="toolbar">
      <input type="search" placeholder="Search by description or id" aria-label="Search nodes"
        value=${search} onInput=${(e) => { setSearch(e.target.value); setFocus(0); listRef.current && (listRef.current.scrollTop = 0); }} />
      <label class="check"><input type="checkbox" checked=${showDeleted}
        onChange=${(e) => { setShowDeleted(e.target.checked); loadedParents.clear(); }} /> Show deleted</label>
      <span class="muted count">${q ? `${rows.length} found` : `${index.nodes.size} nodes`}</span>
    </div>
    <div class="vlist" ref=${listRef} role="tree" aria-label="Node tree" onKeyDown=${onKey}
      onScroll=${(e) => setScrollTop(e.target.scrollTop)}>
      <div style=${`height:${rows.length * ROW_PX}px;position:relative`}>
        ${shown.map((row, i) => html`<${Row} key=${row.key} row=${row} index=${first + i} me=${me}
          node=${index.nodes.get(row.id)} expanded=${expanded.has(row.key)} focused=${first + i === focus}
          onToggle=${() => toggle(row)} onFocus=${() => setFocus(first + i)} onUndelete=${() => undelete(row)}
          path=${row.found ? Index.path(row.id) : null} />`)}
      </div>
      ${rows.length === 0 && html`<p class="muted empty">${q ? 'No node matches.' : 'Nothing here.'}</p>`}
    </div>
  </section>`;
}

function Row({ row, index, node, expanded, focused, onToggle, onFocus, onUndelete, path, me }) {
  const value = mainValue({ type: node?.type, points: points.get(row.id) });
  const href = `#/node/${encodeURIComponent(row.id)}${row.parent ? `?parent=${encodeURIComponent(row.parent)}` : ''}`;
  return html`<div class=${`row${row.deleted ? ' deleted' : ''}`} role="treeitem" data-row=${index}
    aria-level=${row.depth + 1} aria-expanded=${row.hasChildren ? String(expanded) : undefined}
    style=${`top:${index * ROW_PX}px;padding-left:${0.5 + row.depth * 1.1}rem`}>
    ${row.hasChildren
      ? html`<button class="twisty" tabindex="-1" aria-label=${expanded ? 'Collapse' : 'Expand'} onClick=${onToggle}>${expanded ? '▾' : '▸'}</button>`
      : html`<span class="twisty"></span>`}
    <a href=${href} tabindex=${focused ? 0 : -1} onFocus=${onFocus} class="name">${node?.description || row.id}</a>
    <span class="badge">${node?.type}</span>
    ${path && html`<span class="muted path">${path.slice(0, -1).map((n) => n.description || n.type).join(' › ')}</span>`}
    <span class=${`value${value?.tone === 'on' ? ' on' : ''}`}>${value?.text || ''}</span>
    ${value?.error && html`<span class="err-dot" title=${value.error} aria-label=${`error: ${value.error}`}>!</span>`}
    ${row.deleted && html`<span class="badge warn">deleted</span>`}
    ${row.deleted && me.role !== 'view' && html`<button class="small" onClick=${onUndelete}>Undelete</button>`}
  </div>`;
}
