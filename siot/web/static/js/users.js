// Users (admin): list the users of the admin's scope, add one, change a role, reset a password,
// delete. Users are `user` nodes (DESIGN §10); the password is sent as a `password` point, which
// the server hashes before anything stores it.
import { useEffect, useRef, useState } from 'preact/hooks';
import { createNode, deleteNode, getNode, sendPoints } from './api.js';
import { NodePicker, PointFields } from './forms.js';
import { Index, Session } from './session.js';
import { TYPES, formPoints } from './types.js';
import { debounce, html, pointValue } from './util.js';

function UserRow({ user, me, onChanged }) {
  const [mode, setMode] = useState('');
  const [password, setPassword] = useState('');
  const [message, setMessage] = useState('');
  const v = (t) => pointValue(user.points, t);
  const self = user.id === me.id;

  async function act(fn, done) {
    setMessage('');
    try {
      await fn();
      setMessage(done);
      setMode('');
      onChanged();
    } catch (err) {
      setMessage(`Error: ${err.message}`);
    }
  }

  return html`<tr data-user=${v('email')}>
    <th scope="row">${v('email')}<br /><span class="muted small-text">${[v('firstName'), v('lastName')].filter(Boolean).join(' ')}</span></th>
    <td><select aria-label=${`role of ${v('email')}`} value=${v('role')} disabled=${self}
      onChange=${(e) => act(() => sendPoints(user.id, [{ type: 'role', value: e.target.value }]), 'Role changed.')}>
      ${['view', 'edit', 'admin'].map((r) => html`<option value=${r}>${r}</option>`)}</select></td>
    <td>${Index.path(user.parent).map((n) => n.description || n.type).join(' › ') || user.parent}</td>
    <td class="row-actions">
      ${mode === 'password'
        ? html`<form onSubmit=${(e) => { e.preventDefault(); act(() => sendPoints(user.id, [{ type: 'password', value: password }]), 'Password reset.'); }}>
            <input type="password" autocomplete="new-password" aria-label="new password" required value=${password} onInput=${(e) => setPassword(e.target.value)} />
            <button class="primary small" type="submit">Set</button> <button class="small" type="button" onClick=${() => setMode('')}>Cancel</button></form>`
        : html`<button class="small" onClick=${() => setMode('password')}>Reset password</button>`}
      ${!self && (mode === 'delete'
        ? html`<span>Delete ${v('email')}? <button class="danger small" onClick=${() => act(() => deleteNode(user.id, user.parent), 'Deleted.')}>Delete</button>
            <button class="small" onClick=${() => setMode('')}>Cancel</button></span>`
        : html`<button class="small danger" onClick=${() => setMode('delete')}>Delete</button>`)}
      ${message && html`<span class=${message.startsWith('Error') ? 'error' : 'ok'} role="status">${message}</span>`}
    </td></tr>`;
}

export function UsersPage({ me }) {
  const [index, setIndex] = useState(Index.state);
  const [users, setUsers] = useState(null);
  const [adding, setAdding] = useState(false);
  const [values, setValues] = useState({ role: 'view' });
  const [parent, setParent] = useState('');
  const [error, setError] = useState('');
  useEffect(() => Index.subscribe(setIndex), []);
  const entries = index.loaded ? Index.ofType('user') : [];
  const key = entries.map((n) => n.id).join(',');

  // The users as the index has them now; an answer overtaken by a later load is dropped.
  const loads = useRef(0);
  async function load() {
    const seq = ++loads.current;
    const loaded = await Promise.all(Index.ofType('user').map(async (n) => {
      const parentId = n.edges.find((e) => !e.deleted)?.parent;
      const node = await getNode(n.id, parentId);
      return { ...node, parent: parentId };
    }));
    loaded.sort((a, b) => String(pointValue(a.points, 'email')).localeCompare(String(pointValue(b.points, 'email'))));
    if (seq === loads.current) setUsers(loaded);
  }
  useEffect(() => {
    if (!index.loaded) return undefined;
    load().catch((err) => setError(err.message));
    // A user is created in two commits (its edge, then its points): any change of a user node
    // reloads the list, so a new user shows with its email.
    const reload = debounce(() => load().catch(() => {}), 200);
    return Index.onChange((change) => Index.state.nodes.get(change.node)?.type === 'user' && reload());
  }, [key, index.loaded]);

  async function add(e) {
    e.preventDefault();
    setError('');
    try {
      if (!values.email || !values.password) throw new Error('a user needs an email and a password');
      await createNode(parent || index.roots[0], 'user', formPoints(TYPES.user.fields, values));
      setAdding(false);
      setValues({ role: 'view' });
      setParent('');
    } catch (err) {
      setError(err.message);
    }
  }

  return html`<section class="users-page">
    <h1>Users</h1>
    <p class="muted">A user sees the node it hangs under and everything below it. ${''
      }<strong>view</strong> reads, <strong>edit</strong> also changes points and nodes, <strong>admin</strong> also manages users.</p>
    ${error && html`<p class="error" role="alert">${error}</p>`}
    ${adding
      ? html`<form class="card" onSubmit=${add} aria-label="Add a user">
          <${PointFields} name="user" fields=${TYPES.user.fields} values=${values} setValues=${setValues} />
          <${NodePicker} label="Under (scope; blank: your top node)" value=${parent} onChange=${setParent} types=${['device', 'group']} />
          <div class="buttons"><button class="primary" type="submit">Add user</button>
          <button type="button" onClick=${() => setAdding(false)}>Cancel</button></div></form>`
      : html`<button class="primary" onClick=${() => setAdding(true)}>Add user</button>`}
    ${users === null ? html`<p class="loading">Loading…</p>` : html`<div class="table-wrap"><table class="users">
      <thead><tr><th scope="col">User</th><th scope="col">Role</th><th scope="col">Scope</th><th scope="col"><span class="sr-only">actions</span></th></tr></thead>
      <tbody>${users.map((u) => html`<${UserRow} key=${u.id} user=${u} me=${me} onChanged=${() => load().catch(() => {})} />`)}</tbody>
    </table></div>`}
  </section>`;
}

// Any user: who am I, and a new password (allowed on one's own user node whatever the role).
// Changing it revokes every token issued before, this one too: log in again with the new one.
export function MePage({ me }) {
  const [password, setPassword] = useState('');
  const [again, setAgain] = useState('');
  const [message, setMessage] = useState('');
  async function change(e) {
    e.preventDefault();
    setMessage('');
    if (password !== again) return setMessage('Error: the two passwords differ.');
    try {
      await Session.changePassword(me, password);
      setPassword('');
      setAgain('');
      setMessage('Password changed.');
    } catch (err) {
      setMessage(`Error: ${err.message}`);
    }
  }
  return html`<section class="me-page">
    <h1>${me.email}</h1>
    <p>Role <strong>${me.role}</strong> · sees ${me.scopes.map((id) => Index.state.nodes.get(id)?.description || id).join(', ')} and everything below.</p>
    <form class="card narrow" onSubmit=${change} aria-label="Change your password">
      <h2>Change your password</h2>
      <label>New password<input type="password" autocomplete="new-password" required value=${password} onInput=${(e) => setPassword(e.target.value)} /></label>
      <label>Again<input type="password" autocomplete="new-password" required value=${again} onInput=${(e) => setAgain(e.target.value)} /></label>
      <div class="buttons"><button class="primary" type="submit">Change password</button></div>
      ${message && html`<p class=${message.startsWith('Error') ? 'error' : 'ok'} role="status">${message}</p>`}
    </form>
  </section>`;
}
