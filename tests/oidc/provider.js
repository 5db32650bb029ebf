// A real OpenID provider for lumie-coder tests: the certified npm package `oidc-provider`,
// configured like the Keycloak realm `infra` the control plane logs in through in production.
//
// Started by tests as `node tests/oidc/provider.js` (after `npm ci` in tests/oidc). It listens on
// 127.0.0.1 and prints ONE JSON line on stdout once it is ready:
//   {"issuer":"http://127.0.0.1:<port>/realms/infra","port":<port>,"admin":"http://127.0.0.1:<port>/admin"}
//
// Environment:
//   OIDC_CLIENT_SECRET      secret of the client (required, like the `coder-oidc-secret` Secret)
//   OIDC_CLIENT_ID          client id (default `coder`)
//   OIDC_REDIRECT_URIS      comma-separated redirect URIs of that client (required)
//   OIDC_PORT               port to listen on (default 0: any free port)
//   OIDC_ID_TOKEN_TTL_SECS  ID token lifetime (default 300, Keycloak's default)
//   OIDC_CLOCK_SKEW_SECS    offset added to this provider's clock (default 0): tokens it issues
//                           look expired (negative) or not yet valid (positive) to a client
//
// Users (Keycloak-like: `sub` is a UUID; claims `preferred_username`, `email`, `name`, `groups`):
//   alice / alice-password   groups [platform-admins, developers]      -> admin
//   bob   / bob-password     groups [developers]                        -> member
//   dave  / dave-password    groups [/platform-admins] (full group path) -> admin
//   Jane.Doe / jane-password groups []                                  -> member
//   erin  / erin-password    no groups claim at all                     -> member
//
// Logging in without a browser: the authorization request goes to the login page
// `<issuer>/interaction/<uid>` (an HTML form). A test either
//   - POSTs the form to `<issuer>/interaction/<uid>/login` with `username` and `password`
//     (urlencoded, like a browser), or
//   - adds `login_hint=<username>` to the authorization request: the login page then signs that
//     user in at once and redirects on (no form).
// Consent is never asked (first-party client, as in the realm).
//
// Test controls (loopback only, outside the issuer):
//   POST /admin/rotate-keys            adds a NEW signing key (used for every token from now on);
//                                      the old key stays published in the JWKS. Answers {"kids":[…]}
//   POST /admin/clock-skew?seconds=N   sets the clock offset at run time. Answers {"seconds":N}
//   GET  /admin/health                 {"ok":true}
import * as crypto from 'node:crypto';
import * as http from 'node:http';

import Provider from 'oidc-provider';

const PREFIX = '/realms/infra';

function env(name, fallback) {
  const v = process.env[name];
  return v === undefined || v === '' ? fallback : v;
}

const clientSecret = env('OIDC_CLIENT_SECRET');
const redirectUris = env('OIDC_REDIRECT_URIS', '').split(',').map((s) => s.trim()).filter(Boolean);
if (!clientSecret || redirectUris.length === 0) {
  console.error('provider.js: OIDC_CLIENT_SECRET and OIDC_REDIRECT_URIS are required');
  process.exit(2);
}
const clientId = env('OIDC_CLIENT_ID', 'coder');
const idTokenTtl = Number(env('OIDC_ID_TOKEN_TTL_SECS', '300'));

// The provider's clock: every time oidc-provider (and its cookie and cache helpers) reads goes
// through Date.now, so shifting it makes this provider behave like a host whose clock is off.
let clockSkewMs = Number(env('OIDC_CLOCK_SKEW_SECS', '0')) * 1000;
const realNow = Date.now.bind(Date);
Date.now = () => realNow() + clockSkewMs;

const users = new Map([
  ['alice', {
    sub: '3f1c2a9e-0d7b-4a51-9a8e-1b2c3d4e5f01', password: 'alice-password', email: 'alice@lumie-edu.com', name: 'Alice Admin', groups: ['platform-admins', 'developers'],
  }],
  ['bob', {
    sub: '3f1c2a9e-0d7b-4a51-9a8e-1b2c3d4e5f02', password: 'bob-password', email: 'bob@lumie-edu.com', name: 'Bob Builder', groups: ['developers'],
  }],
  ['dave', {
    sub: '3f1c2a9e-0d7b-4a51-9a8e-1b2c3d4e5f03', password: 'dave-password', email: 'dave@lumie-edu.com', name: 'Dave Fullpath', groups: ['/platform-admins'],
  }],
  ['Jane.Doe', {
    sub: '3f1c2a9e-0d7b-4a51-9a8e-1b2c3d4e5f04', password: 'jane-password', email: 'jane.doe@lumie-edu.com', name: 'Jane Doe', groups: [],
  }],
  ['erin', {
    sub: '3f1c2a9e-0d7b-4a51-9a8e-1b2c3d4e5f05', password: 'erin-password', email: 'erin@lumie-edu.com', name: 'Erin NoGroups',
  }],
]);
const usersBySub = new Map([...users].map(([login, u]) => [u.sub, { login, ...u }]));

// The key is asked for as a JWK from generateKeyPairSync itself, never as a KeyObject exported
// afterwards: Node 20 can deadlock in `keyObject.export()` when a garbage collection during the
// export finalizes the key generation job (the main thread waits on a mutex it holds; seen as a
// provider that never prints its ready line, about one start in 200 on a busy machine).
function newSigningKey() {
  const { privateKey: jwk } = crypto.generateKeyPairSync('rsa', {
    modulusLength: 2048,
    publicKeyEncoding: { format: 'jwk' },
    privateKeyEncoding: { format: 'jwk' },
  });
  return {
    ...jwk, use: 'sig', alg: 'RS256', kid: `infra-${crypto.randomBytes(6).toString('hex')}`,
  };
}

// Newest first: oidc-provider signs with the first matching key and publishes all of them.
const signingKeys = [newSigningKey()];
const cookieKeys = [crypto.randomBytes(32).toString('hex')];

function buildProvider(issuer) {
  const provider = new Provider(issuer, {
    clients: [{
      client_id: clientId,
      client_secret: clientSecret,
      redirect_uris: redirectUris,
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    }],
    jwks: { keys: signingKeys },
    cookies: { keys: cookieKeys },
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name', 'preferred_username', 'groups'],
    },
    // Keycloak puts the profile claims in the ID token of the code flow; so do we.
    conformIdTokenClaims: false,
    features: { devInteractions: { enabled: false } },
    pkce: { required: () => true },
    ttl: {
      IdToken: idTokenTtl,
      AccessToken: 300,
      AuthorizationCode: 60,
      Interaction: 3600,
      Session: 36000,
      Grant: 36000,
    },
    interactions: {
      url: (_ctx, interaction) => `${PREFIX}/interaction/${interaction.uid}`,
    },
    // First-party client: no consent screen (the realm's `coder` client has consent off).
    async loadExistingGrant(ctx) {
      const grantId = ctx.oidc.result?.consent?.grantId
        || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (grantId) {
        const found = await ctx.oidc.provider.Grant.find(grantId);
        if (found) return found;
      }
      const grant = new ctx.oidc.provider.Grant({
        clientId: ctx.oidc.client.clientId,
        accountId: ctx.oidc.session.accountId,
      });
      grant.addOIDCScope(ctx.oidc.params.scope || 'openid');
      await grant.save();
      return grant;
    },
    async findAccount(_ctx, sub) {
      const user = usersBySub.get(sub);
      if (!user) return undefined;
      return {
        accountId: sub,
        async claims() {
          const claims = {
            sub,
            preferred_username: user.login,
            email: user.email,
            email_verified: true,
            name: user.name,
          };
          if (user.groups) claims.groups = user.groups;
          return claims;
        },
      };
    },
  });
  provider.on('server_error', (_ctx, err) => console.error('provider.js: server_error', err));
  return provider;
}

let current;
let currentCallback;
function install(issuer) {
  current = buildProvider(issuer);
  currentCallback = current.callback();
}

function json(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function html(res, status, body) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(body);
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({
    '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
  })[c]);
}

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function loginPage(uid, message) {
  return `<!doctype html><html><head><title>Sign in to infra</title></head><body>
<h1>Sign in to infra</h1>${message ? `<p id="error">${escapeHtml(message)}</p>` : ''}
<form method="post" action="${PREFIX}/interaction/${escapeHtml(uid)}/login">
<input name="username" autocomplete="username"><input name="password" type="password">
<button type="submit">Sign in</button></form></body></html>`;
}

async function interaction(req, res, url) {
  const rest = url.pathname.slice(`${PREFIX}/interaction/`.length).split('/');
  const [uid, action] = rest;
  const provider = current;
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) {
    html(res, 400, '<p>interaction mismatch</p>');
    return;
  }
  if (details.prompt.name === 'consent') {
    // Not reached with loadExistingGrant above; kept so a changed config still completes.
    const grant = new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
    grant.addOIDCScope(details.params.scope || 'openid');
    await provider.interactionFinished(req, res, { consent: { grantId: await grant.save() } });
    return;
  }
  if (req.method === 'GET' && !action) {
    const hint = details.params.login_hint;
    if (hint && users.has(hint)) {
      await provider.interactionFinished(req, res, { login: { accountId: users.get(hint).sub } });
      return;
    }
    html(res, 200, loginPage(uid));
    return;
  }
  if (req.method === 'POST' && action === 'login') {
    const form = await readForm(req);
    const user = users.get(form.get('username') || '');
    if (!user || user.password !== form.get('password')) {
      html(res, 200, loginPage(uid, 'Invalid username or password.'));
      return;
    }
    await provider.interactionFinished(req, res, { login: { accountId: user.sub } });
    return;
  }
  html(res, 404, '<p>not found</p>');
}

function admin(req, res, url) {
  if (req.method === 'GET' && url.pathname === '/admin/health') {
    json(res, 200, { ok: true });
    return;
  }
  if (req.method === 'POST' && url.pathname === '/admin/rotate-keys') {
    signingKeys.unshift(newSigningKey());
    install(current.issuer);
    json(res, 200, { kids: signingKeys.map((k) => k.kid) });
    return;
  }
  if (req.method === 'POST' && url.pathname === '/admin/clock-skew') {
    const seconds = Number(url.searchParams.get('seconds'));
    if (!Number.isFinite(seconds)) {
      json(res, 400, { error: 'seconds must be a number' });
      return;
    }
    clockSkewMs = seconds * 1000;
    json(res, 200, { seconds });
    return;
  }
  json(res, 404, { error: 'unknown admin endpoint' });
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://127.0.0.1');
  const done = (err) => {
    console.error('provider.js: request failed', req.method, req.url, err);
    if (!res.headersSent) json(res, 500, { error: 'server_error', error_description: String(err) });
  };
  try {
    if (url.pathname.startsWith('/admin/')) {
      admin(req, res, url);
    } else if (url.pathname.startsWith(`${PREFIX}/interaction/`)) {
      interaction(req, res, url).catch(done);
    } else if (url.pathname === PREFIX || url.pathname.startsWith(`${PREFIX}/`)) {
      // Mounted under the issuer path: oidc-provider derives its mount path from originalUrl.
      req.originalUrl = req.url;
      req.url = req.url.slice(PREFIX.length) || '/';
      currentCallback(req, res);
    } else {
      json(res, 404, { error: 'not found' });
    }
  } catch (err) {
    done(err);
  }
});

server.listen(Number(env('OIDC_PORT', '0')), '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}${PREFIX}`;
  install(issuer);
  process.stdout.write(`${JSON.stringify({ issuer, port, admin: `http://127.0.0.1:${port}/admin` })}\n`);
});

// Tests kill us; also stop when the parent closes our stdin (a crashed test leaves no orphan).
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
process.on('SIGTERM', () => process.exit(0));
