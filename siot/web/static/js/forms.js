// Forms: typed point editing, one form per node type (with a rule's conditions and actions),
// and a node picker over the tree index.
import { useMemo, useState } from 'preact/hooks';
import { Float, createNode, sendPoints } from './api.js';
import { Index } from './session.js';
import { ACTION_FIELDS, CONDITION_FIELDS, TYPES, childTypes, fieldVisible, formPoints, parseTyped } from './types.js';
import { html, kindOf } from './util.js';

const KINDS = [
  ['float', 'number'],
  ['int', 'whole number'],
  ['bool', 'on/off'],
  ['text', 'text'],
  ['json', 'list or map (JSON)'],
];

// A typed-in value -> what is sent: floats stay floats on the wire (2.0, not 2).
function typedValue(kind, raw) {
  if (kind === 'bool') return !!raw;
  const v = parseTyped(raw, kind);
  return kind === 'float' ? new Float(v) : v;
}

// Edit one point (or add one: no `point`) with an input fitted to its kind.
export function PointEditor({ nodeId, point, onDone }) {
  const initialKind = !point ? 'float' : point.float ? 'float' : kindOf(point.value) === 'nil' ? 'text' : kindOf(point.value);
  const [kind, setKind] = useState(initialKind);
  const [type, setType] = useState(point?.type || '');
  const [key, setKey] = useState(point?.key && point.key !== '0' ? point.key : '');
  const initial = point ? (initialKind === 'json' ? JSON.stringify(point.value) : initialKind === 'bool' ? !!point.value : String(point.value ?? '')) : '';
  const [raw, setRaw] = useState(initial);
  const [error, setError] = useState('');
  const [busy, setBusy] = useState(false);

  async function save(e) {
    e.preventDefault();
    setError('');
    let value;
    try {
      if (!type.trim()) throw new Error('a point needs a type');
      value = typedValue(kind, raw);
    } catch (err) {
      setError(err.message);
      return;
    }
    setBusy(true);
    try {
      await sendPoints(nodeId, [{ type: type.trim(), key: key.trim() || '0', value }]);
      onDone();
    } catch (err) {
      setError(err.message);
    } finally {
      setBusy(false);
    }
  }

  const input =
    kind === 'bool'
      ? html`<label class="check"><input type="checkbox" name="value" checked=${!!raw} onChange=${(e) => setRaw(e.target.checked)} /> on</label>`
      : kind === 'json'
        ? html`<textarea name="value" rows="3" aria-label="Value" value=${raw} onInput=${(e) => setRaw(e.target.value)}></textarea>`
        : html`<input name="value" aria-label="Value" autofocus type="text"
            inputmode=${kind === 'int' || kind === 'float' ? 'decimal' : undefined}
            value=${raw} onInput=${(e) => setRaw(e.target.value)} />`;
  return html`<form class="point-editor" onSubmit=${save} onKeyDown=${(e) => e.key === 'Escape' && onDone()}>
    ${!point && html`<input name="type" aria-label="Point type" placeholder="type" value=${type} onInput=${(e) => setType(e.target.value)} />
      <input name="key" aria-label="Point key" placeholder="key (optional)" value=${key} onInput=${(e) => setKey(e.target.value)} />`}
    <select name="kind" aria-label="Value kind" value=${kind} onChange=${(e) => { setKind(e.target.value); if (e.target.value === 'bool') setRaw(false); else if (typeof raw === 'boolean') setRaw(''); }}>
      ${KINDS.map(([k, l]) => html`<option value=${k}>${l}</option>`)}
    </select>
    ${input}
    <button type="submit" class="primary small" disabled=${busy}>Save</button>
    <button type="button" class="small" onClick=${onDone}>Cancel</button>
    ${error && html`<p class="error" role="alert">${error}</p>`}
  </form>`;
}

// Search the tree index by description or id and pick a node.
export function NodePicker({ value, onChange, label, types }) {
  const [q, setQ] = useState('');
  const matches = useMemo(() => {
    const s = q.trim().toLowerCase();
    if (!s) return [];
    const out = [];
    for (const n of Index.state.nodes.values()) {
      if (types && !types.includes(n.type)) continue;
      if (n.description.toLowerCase().includes(s) || n.id.toLowerCase().startsWith(s)) out.push(n);
      if (out.length >= 8) break;
    }
    return out;
  }, [q]);
  const chosen = value && Index.state.nodes.get(value);
  return html`<div class="picker">
    <label>${label}<input type="search" placeholder="search by description or id" value=${q}
      onInput=${(e) => setQ(e.target.value)} /></label>
    ${value && html`<p class="muted">Chosen: <strong>${chosen?.description || value}</strong> <code>${value}</code>
      <button type="button" class="small ghost" onClick=${() => onChange('')}>clear</button></p>`}
    ${matches.length > 0 && html`<ul class="picks">${matches.map((n) => html`<li>
      <button type="button" class="small" onClick=${() => { onChange(n.id); setQ(''); }}>
        ${n.description || n.id} <span class="badge">${n.type}</span></button></li>`)}</ul>`}
  </div>`;
}

function MapInput({ rows = [], onChange, hint }) {
  const set = (i, field, v) => onChange(rows.map((r, j) => (j === i ? { ...r, [field]: v } : r)));
  return html`<div class="map-input">
    ${rows.map((r, i) => html`<div class="map-row">
      <input aria-label="key" placeholder="key" value=${r.key} onInput=${(e) => set(i, 'key', e.target.value)} />
      <input aria-label="value" placeholder=${hint || 'value'} value=${r.value} onInput=${(e) => set(i, 'value', e.target.value)} />
      <button type="button" class="small ghost" aria-label="remove" onClick=${() => onChange(rows.filter((_, j) => j !== i))}>✕</button>
    </div>`)}
    <button type="button" class="small" onClick=${() => onChange([...rows, { key: '', value: '' }])}>+ add</button>
  </div>`;
}

function Field({ field, value, onChange, name, values }) {
  const id = `f-${name}-${field.point}`;
  const common = { id, name: field.point, value: value ?? '', onInput: (e) => onChange(e.target.value) };
  let input;
  switch (field.kind) {
    case 'bool':
      return html`<label class="check field"><input type="checkbox" name=${field.point} checked=${!!value}
        onChange=${(e) => onChange(e.target.checked)} /> ${field.label}</label>`;
    case 'select': {
      const options = typeof field.options === 'function' ? field.options(values) : field.options;
      input = html`<select ...${common} onChange=${(e) => onChange(e.target.value)}>
        ${options.map((o) => html`<option value=${o}>${o}</option>`)}</select>`;
      break;
    }
    case 'map':
      return html`<fieldset class="field"><legend>${field.label}</legend>
        <${MapInput} rows=${value} onChange=${onChange} hint=${field.hint} /></fieldset>`;
    case 'password':
      input = html`<input type="password" autocomplete="new-password" ...${common} />`;
      break;
    case 'number':
    case 'int':
      input = html`<input inputmode="decimal" ...${common} />`;
      break;
    default:
      input = html`<input type="text" ...${common} />`;
  }
  return html`<div class="field"><label for=${id}>${field.label}${field.required ? ' *' : ''}</label>${input}</div>`;
}

function defaults(fields) {
  const v = {};
  for (const f of fields) if (f.value !== undefined) v[f.point] = f.value;
  return v;
}

// A select whose options depend on another field (a condition's operator on its value type)
// keeps its value only while it is one of them.
function fitOptions(fields, values) {
  const next = { ...values };
  for (const f of fields) {
    if (typeof f.options !== 'function') continue;
    const options = f.options(next);
    if (!options.includes(next[f.point])) next[f.point] = options[0];
  }
  return next;
}

// The inputs of one node's points; `kindPoint` (conditionType, action, service) picks the fields.
export function PointFields({ fields, values, setValues, kindPoint, name }) {
  const kind = kindPoint ? values[kindPoint] : undefined;
  return html`<div class="fields">${fields
    .filter((f) => fieldVisible(f, kind))
    .map((f) => html`<${Field} key=${f.point} name=${name} field=${f} value=${values[f.point]} values=${values}
      onChange=${(v) => setValues(fitOptions(fields, { ...values, [f.point]: v }))} />`)}</div>`;
}

// The value of a condition (text for text conditions) and of a notify action (a template) is text.
function pointsOf(fields, values, kindPoint) {
  const textValue = values.valueType === 'text' || values.action === 'notify';
  const adjusted = fields.map((f) => (f.point === 'value' && textValue ? { ...f, kind: 'text' } : f));
  return formPoints(adjusted, values, kindPoint);
}

function missing(fields, values, kindPoint) {
  const kind = kindPoint ? values[kindPoint] : undefined;
  return fields.filter((f) => f.required && fieldVisible(f, kind) && (values[f.point] === undefined || values[f.point] === '')).map((f) => f.label);
}

// Add a child node of a chosen type under `parent`; a rule comes with its conditions and actions.
export function AddChild({ parent, parentType, me, onDone }) {
  const allowed = childTypes(parentType).filter((t) => !TYPES[t].admin || me.role === 'admin');
  const [type, setType] = useState(allowed[0]);
  const [values, setValues] = useState(defaults(TYPES[allowed[0]].fields));
  const [conditions, setConditions] = useState([]);
  const [actions, setActions] = useState([]);
  const [error, setError] = useState('');
  const [busy, setBusy] = useState(false);
  const spec = TYPES[type];

  function choose(t) {
    setType(t);
    setValues(defaults(TYPES[t].fields));
    setConditions([]);
    setActions([]);
  }

  async function submit(e) {
    e.preventDefault();
    setError('');
    let plan;
    try {
      const lacking = [
        ...missing(spec.fields, values, spec.kindPoint),
        ...conditions.flatMap((c) => missing(CONDITION_FIELDS, c, 'conditionType')),
        ...actions.flatMap((a) => missing(ACTION_FIELDS, a.values, 'action')),
      ];
      if (lacking.length) throw new Error(`please fill in: ${lacking.join(', ')}`);
      plan = {
        points: pointsOf(spec.fields, values, spec.kindPoint),
        conditions: conditions.map((c) => pointsOf(CONDITION_FIELDS, c, 'conditionType')),
        actions: actions.map((a) => ({ type: a.type, points: pointsOf(ACTION_FIELDS, a.values, 'action') })),
      };
    } catch (err) {
      setError(err.message);
      return;
    }
    setBusy(true);
    try {
      const { id } = await createNode(parent, type, plan.points);
      for (const c of plan.conditions) await createNode(id, 'condition', c);
      for (const a of plan.actions) await createNode(id, a.type, a.points);
      onDone(id);
    } catch (err) {
      setError(err.message);
    } finally {
      setBusy(false);
    }
  }

  return html`<form class="card add-child" onSubmit=${submit} aria-label="Add a child node">
    <div class="field"><label for="child-type">Type</label>
      <select id="child-type" name="childType" value=${type} onChange=${(e) => choose(e.target.value)}>
        ${allowed.map((t) => html`<option value=${t}>${TYPES[t].label} (${t})</option>`)}
      </select></div>
    <${PointFields} name="new" fields=${spec.fields} values=${values} setValues=${setValues} kindPoint=${spec.kindPoint} />
    ${spec.children && html`
      <h3>Conditions</h3>
      ${conditions.map((c, i) => html`<fieldset class="sub" aria-label=${`condition ${i + 1}`}>
        <legend>Condition ${i + 1} <button type="button" class="small ghost" onClick=${() => setConditions(conditions.filter((_, j) => j !== i))}>remove</button></legend>
        <${PointFields} name=${`c${i}`} fields=${CONDITION_FIELDS} values=${c} kindPoint="conditionType"
          setValues=${(v) => setConditions(conditions.map((x, j) => (j === i ? v : x)))} /></fieldset>`)}
      <button type="button" onClick=${() => setConditions([...conditions, defaults(CONDITION_FIELDS)])}>+ Condition</button>
      <h3>Actions</h3>
      ${actions.map((a, i) => html`<fieldset class="sub" aria-label=${`action ${i + 1}`}>
        <legend>Action ${i + 1}
          <select aria-label="when" value=${a.type} onChange=${(e) => setActions(actions.map((x, j) => (j === i ? { ...x, type: e.target.value } : x)))}>
            <option value="action">when active</option><option value="actionInactive">when inactive</option></select>
          <button type="button" class="small ghost" onClick=${() => setActions(actions.filter((_, j) => j !== i))}>remove</button></legend>
        <${PointFields} name=${`a${i}`} fields=${ACTION_FIELDS} values=${a.values} kindPoint="action"
          setValues=${(v) => setActions(actions.map((x, j) => (j === i ? { ...x, values: v } : x)))} /></fieldset>`)}
      <button type="button" onClick=${() => setActions([...actions, { type: 'action', values: defaults(ACTION_FIELDS) }])}>+ Action</button>`}
    ${error && html`<p class="error" role="alert">${error}</p>`}
    <div class="buttons">
      <button type="submit" class="primary" disabled=${busy}>Create ${TYPES[type].label.toLowerCase()}</button>
      <button type="button" onClick=${() => onDone(null)}>Cancel</button>
    </div>
  </form>`;
}
