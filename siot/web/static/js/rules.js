// Rules at a glance: each rule's state, since when, its conditions' states, its last actions and
// notifications; the notification log (the rules' `notification` history) as a table.
import { useEffect, useState } from 'preact/hooks';
import { getChildren, getNode, history } from './api.js';
import { Index } from './session.js';
import { ago, debounce, description, edgeDeleted, formatTime, formatValue, html, keyed, label, pointValue, timeMs } from './util.js';

const CONDITION_TYPES = ['condition'];
const ACTION_TYPES = ['action', 'actionInactive'];

// A condition's state: the engine stores it only for conditions with a hold time; a pointValue
// condition on a named node is judged here from that node's current value, as the engine does.
function conditionState(cond, watched) {
  const pts = cond.points;
  if (pointValue(pts, 'disabled')) return { text: 'disabled' };
  if (pointValue(pts, 'error')) return { text: 'error', error: pointValue(pts, 'error') };
  const stored = pointValue(pts, 'active');
  if (stored !== undefined) return { text: stored ? 'active' : 'inactive', on: !!stored };
  const kind = pointValue(pts, 'conditionType') || 'pointValue';
  if (kind !== 'pointValue' || !watched) return { text: 'judged by the engine' };
  const value = pointValue(watched.points, pointValue(pts, 'pointType'), String(pointValue(pts, 'pointKey') || '0'));
  if (value === undefined) return { text: 'no value yet' };
  const on = compare(pointValue(pts, 'valueType') || 'number', pointValue(pts, 'operator') || '', value, pointValue(pts, 'value'));
  return { text: on ? 'active' : 'inactive', on, value };
}

function compare(valueType, op, v, ref) {
  if (valueType === 'onOff') {
    if (op === 'on') return !!v;
    if (op === 'off') return !v;
    return op === '!=' ? !!v !== !!ref : !!v === !!ref;
  }
  if (valueType === 'text') {
    if (typeof v !== 'string') return false;
    if (op === 'contains') return v.includes(String(ref ?? ''));
    return op === '!=' ? v !== String(ref ?? '') : v === String(ref ?? '');
  }
  if (typeof v !== 'number') return false;
  const r = Number(ref);
  return { '>': v > r, '>=': v >= r, '<': v < r, '<=': v <= r, '=': v === r, '!=': v !== r }[op] ?? false;
}

// A msgService by its description (notification points name it by id).
const serviceName = (id) => Index.state.nodes.get(id)?.description || id || '';

function actionText(a) {
  const v = (t) => pointValue(a.points, t);
  const target = Index.state.nodes.get(v('nodeID'))?.description;
  if (v('action') === 'setValue') return `set ${v('pointType') || '?'} = ${formatValue(v('value'))}${target ? ` on ${target}` : ''}`;
  if (v('action') === 'notify') return `notify ${target || 'every message service above'}`;
  return v('action') || 'no action set';
}

export function RuleStatus({ rule, children }) {
  const [watched, setWatched] = useState({});
  const conditions = children.filter((c) => CONDITION_TYPES.includes(c.type) && !edgeDeleted(c));
  const actions = children.filter((c) => ACTION_TYPES.includes(c.type) && !edgeDeleted(c));
  const watchedIds = conditions.map((c) => pointValue(c.points, 'nodeID')).filter(Boolean).join(',');
  useEffect(() => {
    let stopped = false;
    Promise.all(watchedIds.split(',').filter(Boolean).map((id) => getNode(id).catch(() => null))).then((nodes) => {
      if (!stopped) setWatched(Object.fromEntries(nodes.filter(Boolean).map((n) => [n.id, n])));
    });
    return () => {
      stopped = true;
    };
  }, [watchedIds, rule.points]);

  const active = !!pointValue(rule.points, 'active');
  const since = timeMs(pointValue(rule.points, 'activeChanged'));
  const lastRuns = keyed(rule.points, 'lastRun');
  const notes = keyed(rule.points, 'notification');
  const error = pointValue(rule.points, 'error');
  return html`<div class="card rule-status" aria-label="rule state">
    <p class="rule-state">
      <span class=${`state ${active ? 'on' : ''}`}>${pointValue(rule.points, 'disabled') ? 'disabled' : active ? 'active' : 'inactive'}</span>
      ${since > 0 && html` since ${formatTime(since)} (${ago(since)})`}
    </p>
    ${error && html`<p class="error">${error}</p>`}
    <h3>Conditions</h3>
    ${conditions.length === 0 ? html`<p class="muted">None: the rule is active while all of none are, which is never useful.</p>` : html`<ul class="conds">
      ${conditions.map((c) => {
        const s = conditionState(c, watched[pointValue(c.points, 'nodeID')]);
        const target = Index.state.nodes.get(pointValue(c.points, 'nodeID'))?.description;
        const op = [target, pointValue(c.points, 'pointType'), pointValue(c.points, 'operator'), formatValue(pointValue(c.points, 'value'))]
          .filter((x) => x !== undefined && x !== '—').join(' ');
        return html`<li><span class=${`state ${s.on ? 'on' : ''}`}>${s.text}</span>
          <a href=${`#/node/${encodeURIComponent(c.id)}?parent=${encodeURIComponent(rule.id)}`}>${description(c) || pointValue(c.points, 'conditionType') || 'condition'}</a>
          <span class="muted">${op}${s.value !== undefined ? ` (now ${formatValue(s.value)})` : ''}</span>
          ${s.error && html`<span class="error">${s.error}</span>`}</li>`;
      })}</ul>`}
    <h3>Actions</h3>
    ${actions.length === 0 ? html`<p class="muted">None.</p>` : html`<ul class="conds">
      ${actions.map((a) => {
        const run = lastRuns.find((p) => p.key === a.id);
        return html`<li><span class="badge">${a.type === 'action' ? 'when active' : 'when inactive'}</span>
          <a href=${`#/node/${encodeURIComponent(a.id)}?parent=${encodeURIComponent(rule.id)}`}>${description(a) || pointValue(a.points, 'action') || 'action'}</a>
          <span class="muted">${actionText(a)} · last run ${run ? `${formatTime(timeMs(run.value))} (${ago(timeMs(run.value))})` : 'never'}</span>
          ${pointValue(a.points, 'error') && html`<span class="error">${pointValue(a.points, 'error')}</span>`}</li>`;
      })}</ul>`}
    ${notes.length > 0 && html`<h3>Last notifications</h3><ul class="conds">${notes.map((n) => html`<li>
      <span class=${`state ${n.value?.ok ? 'on' : 'bad'}`}>${n.value?.ok ? 'sent' : 'failed'}</span>
      ${formatTime(timeMs(n.time))} · ${serviceName(n.value?.service || n.key)} ${n.value?.to ? `to ${[].concat(n.value.to).join(', ')}` : ''}
      <span class="muted">${n.value?.message || n.value?.error || ''}</span></li>`)}</ul>`}
  </div>`;
}

async function loadRule(id) {
  const [rule, children] = await Promise.all([getNode(id), getChildren(id)]);
  return { rule, children };
}

export function RulesPage() {
  const [index, setIndex] = useState(Index.state);
  const [rules, setRules] = useState({});
  const [log, setLog] = useState(null);
  const [error, setError] = useState('');
  useEffect(() => Index.subscribe(setIndex), []);
  const ids = index.loaded ? Index.ofType('rule').map((n) => n.id) : [];
  const key = ids.join(',');

  async function refresh(only) {
    const targets = only ? ids.filter((i) => only.has(i)) : ids;
    try {
      const loaded = await Promise.all(targets.map(loadRule));
      setRules((r) => ({ ...r, ...Object.fromEntries(loaded.map((x) => [x.rule.id, x])) }));
    } catch (err) {
      setError(err.message);
    }
  }

  async function loadLog() {
    const day = 86400e3;
    const entries = [];
    await Promise.all(ids.map(async (id) => {
      const r = await history(id, { type: 'notification', start: new Date(Date.now() - 30 * day).toISOString(), limit: 200 });
      for (const p of r.points || []) entries.push({ rule: id, ...p });
    }));
    entries.sort((a, b) => timeMs(b.time) - timeMs(a.time));
    setLog(entries.slice(0, 500));
  }

  useEffect(() => {
    refresh();
    loadLog().catch((err) => setError(err.message));
    // A change of a rule or of one of its children reloads that rule.
    const dirty = new Set();
    const flush = debounce(() => {
      const only = new Set(dirty);
      dirty.clear();
      refresh(only);
      loadLog().catch(() => {});
    }, 300);
    const stopChanges = Index.onChange((change) => {
      const n = Index.state.nodes.get(change.node);
      if (!n) return;
      const ruleIds = n.type === 'rule' ? [n.id] : n.edges.map((e) => e.parent).filter((p) => Index.state.nodes.get(p)?.type === 'rule');
      if (ruleIds.length) {
        ruleIds.forEach((r) => dirty.add(r));
        flush();
      }
    });
    const stopResets = Index.onReset(() => {
      ids.forEach((r) => dirty.add(r));
      flush();
    });
    return () => {
      stopChanges();
      stopResets();
    };
  }, [key]);

  if (!index.loaded) return html`<p class="loading">Loading…</p>`;
  return html`<section class="rules-page">
    <h1>Rules</h1>
    ${error && html`<p class="error" role="alert">${error}</p>`}
    ${ids.length === 0 && html`<p class="muted">No rules in your part of the tree. Add one from a node's page (Add child → Rule).</p>`}
    <div class="rule-grid">
      ${ids.map((id) => rules[id] && html`<article class="rule" key=${id}>
        <h2><a href=${`#/node/${encodeURIComponent(id)}`}>${label(rules[id].rule)}</a></h2>
        <p class="muted small-text">under ${Index.path(id).slice(0, -1).map((n) => n.description || n.type).join(' › ')}</p>
        <${RuleStatus} rule=${rules[id].rule} children=${rules[id].children} />
      </article>`)}
    </div>
    <h2>Notification log</h2>
    ${log === null ? html`<p class="loading">Loading…</p>` : log.length === 0 ? html`<p class="muted">No notifications in the last 30 days.</p>` : html`
      <div class="table-wrap"><table class="log">
        <thead><tr><th scope="col">Time</th><th scope="col">Rule</th><th scope="col">Service</th><th scope="col">Kind</th>
          <th scope="col">To</th><th scope="col">Result</th><th scope="col">Message</th></tr></thead>
        <tbody>${log.map((e) => html`<tr>
          <td class="nowrap">${formatTime(timeMs(e.time))}</td>
          <td><a href=${`#/node/${encodeURIComponent(e.rule)}`}>${Index.state.nodes.get(e.rule)?.description || e.rule}</a></td>
          <td>${serviceName(e.value?.service || e.key)}</td><td>${e.value?.kind || ''}</td>
          <td>${e.value?.to ? [].concat(e.value.to).join(', ') : ''}</td>
          <td class=${e.value?.ok ? 'ok' : 'error'}>${e.value?.ok ? 'sent' : `failed${e.value?.attempts ? ` after ${e.value.attempts} tries` : ''}`}</td>
          <td>${e.value?.message || e.value?.error || ''}</td></tr>`)}</tbody></table></div>`}
  </section>`;
}
