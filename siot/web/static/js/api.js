// The HTTP API (DESIGN §9) as the UI uses it: the session token, JSON requests with clear
// errors, and the live change stream (/v1/stream) read with fetch, which, unlike EventSource,
// can send the Authorization header.

const SESSION_KEY = 'siot.session';

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// Listeners told when the server says the token is no longer good (401 on a request).
const expiredListeners = new Set();
export function onExpired(fn) {
  expiredListeners.add(fn);
  return () => expiredListeners.delete(fn);
}

export function loadSession() {
  try {
    const s = JSON.parse(localStorage.getItem(SESSION_KEY) || 'null');
    return s && s.token ? s : null;
  } catch {
    return null;
  }
}

export function saveSession(session) {
  if (session) localStorage.setItem(SESSION_KEY, JSON.stringify(session));
  else localStorage.removeItem(SESSION_KEY);
}

// `expires` as the server sends it (RFC 3339, or a number of s, ms or ns) -> ms since the epoch.
export function expiresMs(expires) {
  if (typeof expires === 'string') return Date.parse(expires);
  if (typeof expires !== 'number') return NaN;
  if (expires > 1e17) return expires / 1e6;
  if (expires > 1e11) return expires;
  return expires * 1000;
}

let token = loadSession()?.token || null;
export function setToken(t) {
  token = t;
}

// Numbers written as floats even when whole (2.0): JSON.stringify would send 2, an int.
export class Float {
  constructor(value) {
    this.value = value;
  }
}

function encode(body) {
  const floats = [];
  const json = JSON.stringify(body, (_k, v) => {
    if (v instanceof Float) {
      floats.push(Number.isInteger(v.value) ? v.value.toFixed(1) : String(v.value));
      return `\u0000float${floats.length - 1}\u0000`;
    }
    return v;
  });
  return json.replace(/"\\u0000float(\d+)\\u0000"/g, (_m, i) => floats[Number(i)]);
}

// JSON.parse that remembers which whole numbers were written as floats (30.0): a point's
// `value` 30.0 and 30 are both 30 in JavaScript, so such a point gets `float: true` (where the
// browser gives a reviver the source text), and editing it keeps it a float.
export function parseJson(text) {
  return JSON.parse(text, function (key, value, context) {
    if (key === 'value' && typeof value === 'number' && Number.isInteger(value) && /[.eE]/.test(context?.source || '')) {
      this.float = true;
    }
    return value;
  });
}

function describe(status, data) {
  if (data && typeof data.error === 'string') return data.error;
  return {
    400: 'the server refused the request as bad input',
    401: 'not logged in',
    403: 'not allowed for your user',
    404: 'not found',
    413: 'too large',
    429: 'too many attempts, wait a moment',
  }[status] || `the server answered ${status}`;
}

export async function api(method, path, body, { auth = true } = {}) {
  const headers = {};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (auth && token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : encode(body) });
  } catch (err) {
    throw new ApiError(0, `cannot reach the server (${err.message})`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? parseJson(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = new ApiError(response.status, describe(response.status, data));
    if (response.status === 401 && auth) for (const fn of expiredListeners) fn(error);
    throw error;
  }
  return data;
}

export const get = (path) => api('GET', path);
export const post = (path, body) => api('POST', path, body);
export const del = (path) => api('DELETE', path);

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : '';
}

const enc = encodeURIComponent;
export const nodeUrl = (id, sub = '') => `/v1/nodes/${enc(id)}${sub}`;

export const getNode = (id, parent) => get(nodeUrl(id) + query({ parent }));
export const getChildren = (id, { deleted = false, type } = {}) =>
  get(nodeUrl(id, '/children') + query({ deleted: deleted ? 'true' : undefined, type })).then((r) => r.nodes);
export const sendPoints = (id, points) => post(nodeUrl(id, '/points'), points);
export const createNode = (parent, type, points, id) => post('/v1/nodes', { parent, type, points, id });
export const deleteNode = (id, parent) => del(nodeUrl(id) + query({ parent }));
export const moveNode = (id, from, to) => post(nodeUrl(id, '/move'), { from, to });
export const undeleteNode = (id, parent) => post(`/v1/ui/nodes/${enc(id)}/undelete`, { parent });
export const mirrorNode = (id, to) => post(`/v1/ui/nodes/${enc(id)}/mirror`, { to });
export const history = (id, params) => get(nodeUrl(id, '/history') + query(params));

// Live changes under `node`: calls onEvent({node, parent, points}) for each committed change,
// reconnects with Last-Event-ID (the server resumes from its point log, so nothing is missed;
// when its log no longer reaches back that far it says `reset` and onReset reloads what is
// shown), and onState('live' | 'connecting' | 'error: …'). Returns the function that stops it.
export function stream(node, onEvent, onState = () => {}, onReset = () => {}) {
  const controller = new AbortController();
  let lastId = null;
  let stopped = false;
  let delay = 500;

  async function run() {
    while (!stopped) {
      onState('connecting');
      try {
        const headers = { Authorization: `Bearer ${token}`, Accept: 'text/event-stream' };
        if (lastId !== null) headers['Last-Event-ID'] = lastId;
        const response = await fetch('/v1/stream' + query({ node }), { headers, signal: controller.signal });
        if (response.status === 401) {
          const error = new ApiError(401, 'not logged in');
          for (const fn of expiredListeners) fn(error);
          return;
        }
        if (!response.ok) throw new Error(`the stream answered ${response.status}`);
        onState('live');
        delay = 500;
        await readEvents(response.body, (id, data, name) => {
          if (id !== null) lastId = id;
          if (name === 'reset') onReset();
          else if (data && Array.isArray(data.points)) onEvent(data);
        });
      } catch (err) {
        if (stopped) return;
        onState(`error: ${err.message}`);
      }
      if (stopped) return;
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 10000);
    }
  }
  run();
  return () => {
    stopped = true;
    controller.abort();
  };
}

async function readEvents(body, emit) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  let id = null;
  let name = 'message';
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let nl;
    while ((nl = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, nl).replace(/\r$/, '');
      buffer = buffer.slice(nl + 1);
      if (line === '') {
        if (data.length) {
          let parsed = null;
          try {
            parsed = parseJson(data.join('\n'));
          } catch {
            parsed = null;
          }
          emit(id, parsed, name);
        } else if (id !== null) emit(id, null, name);
        id = null;
        name = 'message';
        data = [];
      } else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
      else if (line.startsWith('event:')) name = line.slice(6).trim();
      else if (line.startsWith('id:')) id = line.slice(3).trim();
    }
  }
}
