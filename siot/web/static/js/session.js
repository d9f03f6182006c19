// Who is logged in, and the tree index every page shares (ids, parents, types, descriptions of
// the whole scope, from /v1/ui/tree), kept current from the change stream.
import { api, expiresMs, get, onExpired, saveSession, sendPoints, setToken, stream } from './api.js';
import { isDeleted } from './util.js';

function store(initial) {
  let state = initial;
  const listeners = new Set();
  return {
    get state() {
      return state;
    },
    set(next) {
      state = { ...state, ...next };
      for (const fn of listeners) fn(state);
    },
    subscribe(fn) {
      listeners.add(fn);
      fn(state);
      return () => listeners.delete(fn);
    },
  };
}

const sessionStore = store({ status: 'out', notice: '', me: null });
let expiryTimer = null;
// While the user changes its own password: the change revokes the token in use, so a request
// refused meanwhile is not an expiry (a new token follows at once).
let renewing = false;

export const Session = {
  get state() {
    return sessionStore.state;
  },
  subscribe: sessionStore.subscribe,
  // Log in: a token for these credentials, kept in localStorage, then the session starts.
  async login(email, password) {
    const reply = await api('POST', '/v1/auth', { email, password }, { auth: false });
    const session = { token: reply.token, expires: reply.expires, email };
    setToken(reply.token);
    saveSession(session);
    await Session.start(session);
  },
  async changePassword(me, password) {
    renewing = true;
    try {
      await sendPoints(me.id, [{ type: 'password', value: password }]);
      await Session.login(me.email, password);
    } finally {
      renewing = false;
    }
  },
  async start(session) {
    setToken(session.token);
    if (sessionStore.state.status !== 'in') sessionStore.set({ status: 'loading', notice: '' });
    clearTimeout(expiryTimer);
    const left = expiresMs(session.expires) - Date.now();
    if (left < 2 ** 31) expiryTimer = setTimeout(() => Session.expired(), Math.max(left, 0));
    try {
      const me = await get('/v1/ui/me');
      sessionStore.set({ status: 'in', me });
      if (!Index.state.loaded) Index.load();
    } catch (err) {
      if (err.status === 401) Session.expired();
      else sessionStore.set({ status: 'error', notice: `Cannot load your user: ${err.message}` });
    }
  },
  end(notice) {
    clearTimeout(expiryTimer);
    saveSession(null);
    setToken(null);
    Index.reset();
    sessionStore.set({ status: 'out', notice, me: null });
  },
  logout() {
    Session.end('You are logged out.');
  },
  expired() {
    if (renewing) return;
    if (sessionStore.state.status !== 'out') Session.end('Your session expired. Log in again.');
    else sessionStore.set({ notice: 'Your session expired. Log in again.' });
  },
};

// Any request the server refuses for the token (expired, revoked, forged) ends the session.
onExpired(() => Session.expired());

// --- the tree index ---
// nodes: id -> {id, type, description, edges: [{parent, deleted}]}; children: parent -> [ids]

const indexStore = store({ loaded: false, error: '', version: 0, roots: [], nodes: new Map(), children: new Map() });
let stopStreams = [];

function build(reply) {
  const nodes = new Map();
  const children = new Map();
  for (const [id, parent, type, deleted, description] of reply.nodes) {
    let n = nodes.get(id);
    if (!n) nodes.set(id, (n = { id, type, description: description || '', edges: [] }));
    n.edges.push({ parent, deleted: !!deleted });
    if (!children.has(parent)) children.set(parent, []);
    children.get(parent).push(id);
  }
  return { nodes, children };
}

function applyChange(change) {
  const { nodes, children } = indexStore.state;
  let changed = false;
  if (change.parent) {
    // An edge: created, deleted, undeleted (edge points nodeType and tombstone).
    let n = nodes.get(change.node);
    const typePoint = change.points.find((p) => p.type === 'nodeType');
    const tomb = change.points.find((p) => p.type === 'tombstone');
    if (!n && typePoint) {
      nodes.set(change.node, (n = { id: change.node, type: typePoint.value, description: '', edges: [] }));
    }
    if (!n) return false;
    let edge = n.edges.find((e) => e.parent === change.parent);
    if (!edge) {
      edge = { parent: change.parent, deleted: false };
      n.edges.push(edge);
      if (!children.has(change.parent)) children.set(change.parent, []);
      children.get(change.parent).push(change.node);
    }
    if (tomb) edge.deleted = (tomb.value || 0) % 2 === 1;
    changed = true;
  } else {
    const n = nodes.get(change.node);
    const d = change.points.find((p) => p.type === 'description' && (p.key || '0') === '0');
    if (n && d) {
      n.description = isDeleted(d) ? '' : String(d.value ?? '');
      changed = true;
    }
  }
  return changed;
}

let pending = false;
function bump() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => {
    pending = false;
    indexStore.set({ version: indexStore.state.version + 1 });
  });
}

// Listeners of every change under the user's scope (the tree's live values), and of the
// stream's resets (changes were missed: reload).
const changeListeners = new Set();
const resetListeners = new Set();

export const Index = {
  get state() {
    return indexStore.state;
  },
  subscribe: indexStore.subscribe,
  onChange(fn) {
    changeListeners.add(fn);
    return () => changeListeners.delete(fn);
  },
  onReset(fn) {
    resetListeners.add(fn);
    return () => resetListeners.delete(fn);
  },
  async load() {
    try {
      const reply = await get('/v1/ui/tree');
      const { nodes, children } = build(reply);
      indexStore.set({ loaded: true, error: '', roots: reply.roots, nodes, children, version: indexStore.state.version + 1 });
      // One stream per scope root (a user under several nodes has several; the server's default
      // stream is only for a user under one).
      if (!stopStreams.length) {
        for (const root of reply.roots) {
          stopStreams.push(stream(
            root,
            (change) => {
              if (applyChange(change)) bump();
              for (const fn of changeListeners) fn(change);
            },
            (s) => indexStore.set({ stream: s }),
            () => {
              resetListeners.forEach((fn) => fn());
              Index.load();
            },
          ));
        }
      }
    } catch (err) {
      indexStore.set({ error: err.message });
    }
  },
  reset() {
    stopStreams.forEach((stop) => stop());
    stopStreams = [];
    indexStore.set({ loaded: false, roots: [], nodes: new Map(), children: new Map() });
  },
  // Descriptions of the path from a scope root down to `id` (first parent found).
  path(id) {
    const { nodes, roots } = indexStore.state;
    const out = [];
    const seen = new Set();
    let cur = nodes.get(id);
    while (cur && !seen.has(cur.id)) {
      seen.add(cur.id);
      out.unshift(cur);
      if (roots.includes(cur.id)) break;
      const edge = cur.edges.find((e) => !e.deleted) || cur.edges[0];
      cur = edge && nodes.get(edge.parent);
    }
    return out;
  },
  ofType(type) {
    return [...indexStore.state.nodes.values()].filter((n) => n.type === type && n.edges.some((e) => !e.deleted));
  },
};
