// The web UI's shell: login, the session, the header, and the hash router.
import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { ApiError, expiresMs, loadSession } from './api.js';
import { ChartPage } from './chart.js';
import { HealthPage } from './health.js';
import { NodePage } from './node.js';
import { RulesPage } from './rules.js';
import { Session } from './session.js';
import { TreePage } from './tree.js';
import { MePage, UsersPage } from './users.js';
import { html } from './util.js';

function parseRoute(hash) {
  const [path, q = ''] = hash.replace(/^#/, '').split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  return { name: parts[0] || 'tree', args: parts.slice(1), query: new URLSearchParams(q) };
}

function useRoute() {
  const [route, setRoute] = useState(parseRoute(location.hash));
  useEffect(() => {
    const on = () => setRoute(parseRoute(location.hash));
    addEventListener('hashchange', on);
    return () => removeEventListener('hashchange', on);
  }, []);
  return route;
}

function Login({ notice }) {
  const [email, setEmail] = useState('');
  const [password, setPassword] = useState('');
  const [error, setError] = useState('');
  const [busy, setBusy] = useState(false);

  async function submit(e) {
    e.preventDefault();
    setBusy(true);
    setError('');
    try {
      await Session.login(email, password);
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) setError('Wrong email or password.');
      else if (err instanceof ApiError && err.status === 429) setError(`Too many attempts: ${err.message}`);
      else setError(err.message);
    } finally {
      setBusy(false);
    }
  }

  return html`<main class="login">
    <form class="card login-card" onSubmit=${submit} aria-labelledby="login-title">
      <h1 id="login-title">siot</h1>
      ${notice && html`<p class="notice" role="status">${notice}</p>`}
      <label>Email<input name="email" type="text" autocomplete="username" required autofocus
        value=${email} onInput=${(e) => setEmail(e.target.value)} /></label>
      <label>Password<input name="password" type="password" autocomplete="current-password" required
        value=${password} onInput=${(e) => setPassword(e.target.value)} /></label>
      ${error && html`<p class="error" role="alert">${error}</p>`}
      <button type="submit" class="primary" disabled=${busy}>${busy ? 'Logging in…' : 'Log in'}</button>
    </form>
  </main>`;
}

function Header({ me, route }) {
  const link = (name, text, href = `#/${name}`) => html`<a href=${href}
    aria-current=${route.name === name ? 'page' : undefined}>${text}</a>`;
  return html`<header class="top">
    <a class="brand" href="#/">siot</a>
    <nav aria-label="pages">
      ${link('tree', 'Tree', '#/')}
      ${link('rules', 'Rules')}
      ${me.instanceWide && link('health', 'Sync & health')}
      ${me.role === 'admin' && link('users', 'Users')}
    </nav>
    <a class="who" href="#/me" title=${`${me.email} (${me.role}): your account`}>${me.email} · ${me.role}</a>
    <button class="ghost" onClick=${() => Session.logout()}>Log out</button>
  </header>`;
}

function Page({ me, route }) {
  switch (route.name) {
    case 'node':
      return html`<${NodePage} me=${me} id=${route.args[0]} parent=${route.query.get('parent') || ''} />`;
    case 'chart':
      return html`<${ChartPage} me=${me} id=${route.args[0]} query=${route.query} />`;
    case 'rules':
      return html`<${RulesPage} me=${me} />`;
    case 'health':
      return html`<${HealthPage} me=${me} />`;
    case 'me':
      return html`<${MePage} me=${me} />`;
    case 'users':
      return me.role === 'admin' ? html`<${UsersPage} me=${me} />` : html`<p class="error">Only an admin manages users.</p>`;
    default:
      return html`<${TreePage} me=${me} />`;
  }
}

function App() {
  const [state, setState] = useState(Session.state);
  const route = useRoute();
  useEffect(() => Session.subscribe(setState), []);

  if (state.status === 'out') return html`<${Login} notice=${state.notice} />`;
  if (state.status === 'loading') return html`<p class="loading">Loading…</p>`;
  if (state.status === 'error')
    return html`<main class="login"><div class="card"><p class="error" role="alert">${state.notice}</p>
      <button onClick=${() => Session.logout()}>Log out</button></div></main>`;
  return html`<div class="shell">
    <${Header} me=${state.me} route=${route} />
    <main id="main"><${Page} me=${state.me} route=${route} /></main>
  </div>`;
}

const session = loadSession();
if (session && expiresMs(session.expires) > Date.now()) Session.start(session);
else if (session) Session.expired();
render(html`<${App} />`, document.getElementById('app'));
