// A real OAuth 2.1 / OpenID Connect authorization server for the gateway's end-to-end tests,
// built on oidc-provider. Test use only: in-memory storage, a fresh signing key per run, and a
// login page that believes whoever types a name.
//
//   node server.js --port 0 [--resource-prefix URL]... [--log-file FILE] [--exit-with-stdin]
//                  [--registration-scope every|as-registered]
//
// Prints exactly one line on stdout, `LISTENING <port>`, once it accepts connections (every
// other message goes to stderr). The issuer is http://127.0.0.1:<port>. Stops on SIGTERM or
// SIGINT, and with --exit-with-stdin also when its stdin closes (so it never outlives a parent
// that was killed). Needs Node.js 20.18 or newer.
//
// What it does:
// - Resource indicators (RFC 8707). A resource is accepted when it is http://127.0.0.1:<any
//   port>/... or starts with a --resource-prefix (env AS_RESOURCE_PREFIXES, space separated).
//   Its scopes are mcp:access demo:read demo:write. Access tokens for it are JWTs (RFC 9068:
//   typ at+jwt, RS256, aud = the resource, a `scope` claim), except for resources whose path
//   starts with /opaque, which get opaque tokens that only introspection can read.
// - Dynamic client registration (RFC 7591), open. Its scope policy (--registration-scope, env
//   AS_REGISTRATION_SCOPE): `every` (the default) replaces the `scope` a client registers with
//   every scope this server has and says so in the registration response (RFC 7591 §3.2.1),
//   so a client that registered with its first challenge's scopes can step up later;
//   `as-registered` is oidc-provider's own behaviour: an authorization request for any scope
//   beyond the registered ones is refused with `invalid_scope`. The MCP SDKs register with the
//   scope of the challenge that started their flow, so an AS must allow more (as `every` does)
//   for step-up to work at all. Authorization code with PKCE S256, required
//   for every client; public clients (token_endpoint_auth_method none) with loopback redirect
//   URIs. Refresh tokens when offline_access is granted.
// - DPoP (RFC 9449). A token request with a `DPoP` proof (ES256, Ed25519 or EdDSA key; no
//   server nonce) gets a sender-constrained token: `token_type: DPoP` in the response and
//   `cnf: {jkt: <the key's RFC 7638 thumbprint>}` in the access token. Without a proof, a
//   Bearer token as before. Any grant: authorization code, refresh, client credentials.
// - Login and consent without a browser: /auth redirects to /interaction/<uid>, a page with one
//   HTML form. Posting it as it is logs in `alice` (the `login` field) and then, on the next
//   page, grants every scope the client asked for. See INTERACTIONS below.
// - A pre-registered confidential client (AS_GATEWAY_CLIENT_ID / AS_GATEWAY_CLIENT_SECRET,
//   default gateway / gateway-secret; client_secret_basic or client_secret_post) for client
//   credentials, token introspection (RFC 7662), revocation and token exchange (RFC 8693).
//   Token exchange: any confidential client may trade any valid access token this server
//   issued (JWT or opaque) for an access token for one audience/resource (a JWT, or opaque
//   for /opaque resources) with the subject's `sub`, `act: {sub: <caller>}` and a scope
//   within the subject token's.
// - Every request is recorded: GET /__log returns the records as JSON, POST /__log/clear
//   empties them, and --log-file also appends each one as a JSON line.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as querystring from 'node:querystring';
import { parseArgs } from 'node:util';

import * as jose from 'jose';
import Provider, { errors } from 'oidc-provider';

// oidc-provider prints its notices with console.info; stdout carries only the LISTENING line.
console.info = console.error;

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: process.env.AS_PORT ?? '0' },
    'resource-prefix': { type: 'string', multiple: true, default: [] },
    'log-file': { type: 'string', default: process.env.AS_LOG_FILE },
    'exit-with-stdin': { type: 'boolean', default: false },
    'registration-scope': { type: 'string', default: process.env.AS_REGISTRATION_SCOPE ?? 'every' },
  },
});
if (!['every', 'as-registered'].includes(args['registration-scope'])) {
  throw new Error(`--registration-scope must be every or as-registered, not ${args['registration-scope']}`);
}

const RESOURCE_PREFIXES = [
  ...args['resource-prefix'],
  ...(process.env.AS_RESOURCE_PREFIXES ?? '').split(/\s+/).filter(Boolean),
];
const GATEWAY_CLIENT_ID = process.env.AS_GATEWAY_CLIENT_ID || 'gateway';
const GATEWAY_CLIENT_SECRET = process.env.AS_GATEWAY_CLIENT_SECRET || 'gateway-secret';

const RESOURCE_SCOPES = ['mcp:access', 'demo:read', 'demo:write'];
const SCOPES = ['openid', 'offline_access', ...RESOURCE_SCOPES];
const ACCESS_TOKEN_TTL = 600;
const SIGNING_ALG = 'RS256';

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
const JWT_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:jwt';

// ---------------------------------------------------------------------------------------------
// Request log

const records = [];
let sequence = 0;
const REDACTED = new Set(['client_secret', 'client_assertion']);

function record(entry) {
  const full = { seq: ++sequence, time: new Date().toISOString(), ...entry };
  records.push(full);
  if (args['log-file']) {
    fs.appendFileSync(args['log-file'], `${JSON.stringify(full)}\n`);
  }
}

function redact(params) {
  if (!params || typeof params !== 'object') return undefined;
  return Object.fromEntries(
    Object.entries(params)
      .filter(([, value]) => value !== undefined)
      .map(([key, value]) => [key, REDACTED.has(key) ? '<redacted>' : value]),
  );
}

function decodeJwt(value) {
  try {
    return { header: jose.decodeProtectedHeader(value), claims: jose.decodeJwt(value) };
  } catch {
    return undefined;
  }
}

function locationDetails(location) {
  if (!location) return {};
  const url = new URL(location, 'http://placeholder.invalid');
  return { location, location_params: Object.fromEntries(url.searchParams) };
}

// ---------------------------------------------------------------------------------------------
// Resources (RFC 8707)

function resourceAllowed(resource) {
  const url = URL.parse(resource);
  if (!url || url.hash || url.username || url.password) return false;
  if (url.protocol === 'http:' && url.hostname === '127.0.0.1') return true;
  return RESOURCE_PREFIXES.some(
    (prefix) => resource === prefix || resource.startsWith(prefix.endsWith('/') ? prefix : `${prefix}/`),
  );
}

function resourceServerInfo(resource) {
  if (!resourceAllowed(resource)) {
    throw new errors.InvalidTarget(`unknown resource ${resource}`);
  }
  const opaque = new URL(resource).pathname.startsWith('/opaque');
  return {
    scope: RESOURCE_SCOPES.join(' '),
    audience: resource,
    accessTokenTTL: ACCESS_TOKEN_TTL,
    accessTokenFormat: opaque ? 'opaque' : 'jwt',
    ...(opaque ? {} : { jwt: { sign: { alg: SIGNING_ALG } } }),
  };
}

// ---------------------------------------------------------------------------------------------
// Token exchange (RFC 8693)

const actorClaims = new WeakMap(); // exchanged AccessToken -> its `act` claim

async function verifySubjectToken(provider, publicKeys, value) {
  if (value.split('.').length === 3) {
    const { payload } = await jose.jwtVerify(value, publicKeys, {
      issuer: provider.issuer,
      typ: 'at+jwt',
      algorithms: [SIGNING_ALG],
    });
    return { sub: payload.sub, scope: payload.scope, act: payload.act };
  }
  // Opaque: one this server issued and still holds.
  const token = (await provider.AccessToken.find(value)) ?? (await provider.ClientCredentials.find(value));
  if (!token?.isValid) throw new Error('unknown or expired opaque token');
  return { sub: token.accountId ?? token.clientId, scope: token.scope, act: token.extra?.act };
}

function asList(value) {
  if (value === undefined) return [];
  return Array.isArray(value) ? value : [value];
}

function tokenExchangeHandler(provider, publicKeys) {
  return async function exchange(ctx) {
    const { client, params } = ctx.oidc;

    // The caller must have authenticated with its secret (client_auth has checked it already).
    if (!['client_secret_basic', 'client_secret_post'].includes(client.clientAuthMethod)) {
      throw new errors.UnauthorizedClient('token exchange needs a confidential client');
    }

    for (const name of ['subject_token', 'subject_token_type']) {
      if (!params[name]) throw new errors.InvalidRequest(`missing required parameter '${name}'`);
    }
    if (![ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE].includes(params.subject_token_type)) {
      throw new errors.InvalidRequest('unsupported subject_token_type');
    }
    if (params.actor_token !== undefined || params.actor_token_type !== undefined) {
      throw new errors.InvalidRequest('actor_token is not supported');
    }
    if (params.requested_token_type !== undefined && params.requested_token_type !== ACCESS_TOKEN_TYPE) {
      throw new errors.InvalidRequest('only access tokens can be requested');
    }

    // RFC 8693 §2.2.2: an invalid or unacceptable subject_token is `invalid_request`.
    let subject;
    try {
      subject = await verifySubjectToken(provider, publicKeys, params.subject_token);
    } catch (cause) {
      throw new errors.InvalidRequest('subject_token is invalid', undefined, { cause });
    }
    if (typeof subject.sub !== 'string' || !subject.sub) {
      throw new errors.InvalidRequest('subject_token has no subject');
    }

    // One target, named by `audience` or `resource`; anything else is `invalid_target`.
    const targets = [...asList(params.audience), ...asList(params.resource)];
    if (targets.length !== 1) {
      throw new errors.InvalidTarget('exactly one audience or resource is required');
    }
    const [target] = targets;
    const info = resourceServerInfo(target);

    // The new token's scope must be within the subject's and the target's (`invalid_scope`).
    const subjectScopes = new Set((subject.scope ?? '').split(' ').filter(Boolean));
    const targetScopes = new Set(info.scope.split(' '));
    const requested = params.scope
      ? [...new Set(params.scope.split(' ').filter(Boolean))]
      : [...subjectScopes].filter((scope) => targetScopes.has(scope));
    const excess = requested.filter((scope) => !subjectScopes.has(scope) || !targetScopes.has(scope));
    if (excess.length) {
      throw new errors.InvalidScope(`scope exceeds the subject token's: ${excess.join(' ')}`);
    }
    if (!requested.length) {
      throw new errors.InvalidScope('no scope left to grant');
    }

    const token = new provider.AccessToken({
      accountId: subject.sub,
      client,
      gty: TOKEN_EXCHANGE,
      scope: requested.join(' '),
    });
    token.resourceServer = new provider.ResourceServer(target, info);
    // RFC 8693 §4.1: the caller is the current actor; an earlier delegation nests inside it.
    actorClaims.set(token, { sub: client.clientId, ...(subject.act ? { act: subject.act } : {}) });

    ctx.oidc.entity('AccessToken', token);
    const accessToken = await token.save();
    ctx.body = {
      access_token: accessToken,
      issued_token_type: ACCESS_TOKEN_TYPE,
      token_type: 'Bearer',
      expires_in: token.expiration,
      scope: token.scope,
    };
  };
}

// ---------------------------------------------------------------------------------------------
// INTERACTIONS: login and consent as plain HTML forms, drivable by any HTTP client.
//
// GET /interaction/<uid> shows one form (the first <form> on the page) whose fields, posted
// back unchanged, do the default thing: log in as `alice`, then approve. POST the login form
// with another `login` to be someone else, or post `decision=deny` to refuse consent.

const escapeHtml = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(title, body) {
  return `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>${escapeHtml(title)}</title></head>
<body><h1>${escapeHtml(title)}</h1>
${body}
</body></html>
`;
}

function form(uid, fields, button) {
  const inputs = Object.entries(fields)
    .map(([name, value]) => `<input type="${name === 'login' ? 'text' : 'hidden'}" name="${name}" value="${escapeHtml(value)}">`)
    .join('\n  ');
  return `<form method="post" action="/interaction/${escapeHtml(uid)}">
  ${inputs}
  <button type="submit">${escapeHtml(button)}</button>
</form>`;
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 16 * 1024) throw new Error('form too large');
    chunks.push(chunk);
  }
  return querystring.parse(Buffer.concat(chunks).toString('utf8'));
}

function missingScopes(details) {
  const { missingOIDCScope = [], missingResourceScopes = {} } = details;
  return { oidc: missingOIDCScope, resources: missingResourceScopes };
}

async function showInteraction(provider, req, res, uid) {
  const { prompt, params } = await provider.interactionDetails(req, res);
  let html;
  if (prompt.name === 'login') {
    html = page('Sign in', form(uid, { prompt: 'login', login: 'alice' }, 'Sign in'));
  } else if (prompt.name === 'consent') {
    const { oidc, resources } = missingScopes(prompt.details);
    const items = [
      ...oidc.map((scope) => `<li>${escapeHtml(scope)}</li>`),
      ...Object.entries(resources).map(
        ([resource, scopes]) => `<li>${escapeHtml(scopes.join(' '))} at ${escapeHtml(resource)}</li>`,
      ),
    ].join('');
    html = page(
      `Allow ${params.client_id}?`,
      `${form(uid, { prompt: 'consent', decision: 'approve' }, 'Allow')}
<ul>${items}</ul>
${form(uid, { prompt: 'consent', decision: 'deny' }, 'Deny')}`,
    );
  } else {
    throw new Error(`unexpected prompt ${prompt.name}`);
  }
  res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(html);
  return { prompt: prompt.name, details: prompt.details };
}

async function submitInteraction(provider, req, res) {
  const fields = await readForm(req);
  const { prompt, params, session, grantId } = await provider.interactionDetails(req, res);
  if (fields.prompt !== prompt.name) {
    throw new Error(`form for ${fields.prompt} posted to a ${prompt.name} interaction`);
  }
  let result;
  if (prompt.name === 'login') {
    const login = String(fields.login ?? '');
    if (!/^[A-Za-z0-9._-]{1,64}$/.test(login)) throw new Error('login must be a simple user name');
    result = { login: { accountId: login } };
  } else if (fields.decision === 'deny') {
    result = { error: 'access_denied', error_description: 'the user refused consent' };
  } else {
    const grant = grantId
      ? await provider.Grant.find(grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    const { oidc, resources } = missingScopes(prompt.details);
    if (oidc.length) grant.addOIDCScope(oidc.join(' '));
    if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
    for (const [resource, scopes] of Object.entries(resources)) {
      grant.addResourceScope(resource, scopes.join(' '));
    }
    result = { consent: { grantId: await grant.save() } };
  }
  // Writes the 303 back to the authorization endpoint, which resumes the request.
  await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: true });
  return { prompt: prompt.name, form: fields, result: result.error ? result : Object.keys(result) };
}

// ---------------------------------------------------------------------------------------------
// The provider

async function signingKeys() {
  const { privateKey, publicKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const kid = crypto.randomBytes(8).toString('hex');
  const privateJwk = { ...privateKey.export({ format: 'jwk' }), kid, alg: SIGNING_ALG, use: 'sig' };
  const publicJwk = { ...publicKey.export({ format: 'jwk' }), kid, alg: SIGNING_ALG, use: 'sig' };
  return { privateJwk, publicKeys: jose.createLocalJWKSet({ keys: [publicJwk] }) };
}

function buildProvider(issuer, { privateJwk, publicKeys }) {
  const provider = new Provider(issuer, {
    jwks: { keys: [privateJwk] },
    cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
    scopes: SCOPES,
    responseTypes: ['code'],
    pkce: { required: () => true },
    clients: [
      {
        client_id: GATEWAY_CLIENT_ID,
        client_secret: GATEWAY_CLIENT_SECRET,
        client_name: 'MCP gateway',
        token_endpoint_auth_method: 'client_secret_basic',
        grant_types: ['client_credentials', 'refresh_token', TOKEN_EXCHANGE],
        response_types: [],
        redirect_uris: [],
      },
    ],
    clientDefaults: { id_token_signed_response_alg: SIGNING_ALG },
    features: {
      devInteractions: { enabled: false },
      registration: { enabled: true, initialAccessToken: false },
      clientCredentials: { enabled: true },
      // On by default in oidc-provider 9, written out because the tests rely on it. No nonce:
      // oidc-provider then checks a proof's iat within its own window instead (RFC 9449 §8).
      dPoP: { enabled: true, requireNonce: () => false },
      introspection: {
        enabled: true,
        // Only a confidential client may ask about tokens (RFC 7662 §4).
        allowedPolicy: async (ctx, client) => client.clientAuthMethod !== 'none',
      },
      revocation: { enabled: true },
      rpInitiatedLogout: { enabled: false },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (ctx, client, oneOf) => oneOf,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (ctx, resource) => resourceServerInfo(resource),
      },
    },
    // RFC 7591 §3.2.1 lets the server replace requested metadata. With --registration-scope
    // every, a dynamically registered client may use every scope: the MCP SDKs register with
    // the scope of their first challenge only, and oidc-provider refuses any later
    // authorization for a scope beyond the registered ones (`invalid_scope`), so no step-up
    // could ever succeed. The response carries the replaced value, so the client can see it.
    extraClientMetadata: {
      properties: ['scope_policy'],
      validator(ctx, key, value, metadata) {
        if (ctx?.oidc?.route === 'registration' && args['registration-scope'] === 'every') {
          metadata.scope = SCOPES.join(' ');
        }
        delete metadata.scope_policy;
      },
    },
    extraTokenClaims: async (ctx, token) => {
      const act = actorClaims.get(token);
      return act ? { act } : undefined;
    },
    findAccount: async (ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
    interactions: { url: async (ctx, interaction) => `/interaction/${interaction.uid}` },
    clientBasedCORS: () => false,
    renderError: async (ctx, out) => {
      ctx.type = 'json';
      ctx.body = out;
    },
    ttl: {
      AccessToken: ACCESS_TOKEN_TTL,
      AuthorizationCode: 60,
      ClientCredentials: ACCESS_TOKEN_TTL,
      Grant: 3600,
      IdToken: 600,
      Interaction: 600,
      RefreshToken: 3600,
      Session: 3600,
    },
  });

  provider.registerGrantType(
    TOKEN_EXCHANGE,
    tokenExchangeHandler(provider, publicKeys),
    [
      'subject_token', 'subject_token_type', 'actor_token', 'actor_token_type',
      'requested_token_type', 'audience', 'resource', 'scope',
    ],
    ['audience', 'resource'],
  );

  // One record per request the provider serves, written once it has answered.
  provider.use(async (ctx, next) => {
    try {
      await next();
    } finally {
      const oidc = ctx.oidc;
      const body = ctx.body && typeof ctx.body === 'object' && !Buffer.isBuffer(ctx.body) ? ctx.body : undefined;
      const issued = typeof body?.access_token === 'string' ? decodeJwt(body.access_token) : undefined;
      record({
        kind: 'http',
        method: ctx.method,
        path: ctx.path,
        route: oidc?.route,
        query: Object.keys(ctx.query).length ? { ...ctx.query } : undefined,
        params: ctx.method === 'POST' ? redact(oidc?.params) : undefined,
        body: oidc?.route === 'registration' && ctx.method === 'POST' ? oidc.body : undefined,
        client_id: oidc?.entities?.Client?.clientId,
        status: ctx.status,
        ...locationDetails(ctx.response.get('location')),
        error: ctx.status >= 400 ? body?.error : undefined,
        error_description: ctx.status >= 400 ? body?.error_description : undefined,
        response: ctx.status < 400 && oidc?.route === 'registration' ? body : undefined,
        token: body?.access_token
          ? {
              token_type: body.token_type,
              scope: body.scope,
              expires_in: body.expires_in,
              issued_token_type: body.issued_token_type,
              refresh_token: Boolean(body.refresh_token),
              format: issued ? 'jwt' : 'opaque',
              ...issued,
            }
          : undefined,
        introspection: oidc?.route === 'introspection' ? body : undefined,
      });
    }
  });

  return provider;
}

// ---------------------------------------------------------------------------------------------
// The HTTP server: admin and interaction routes, then the provider

function sendJson(res, status, value) {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify(value));
}

function handler(provider) {
  const callback = provider.callback();
  return async (req, res) => {
    const { pathname } = new URL(req.url, provider.issuer);
    if (pathname === '/__log' && req.method === 'GET') return sendJson(res, 200, records);
    if (pathname === '/__log/clear' && req.method === 'POST') {
      records.length = 0;
      return sendJson(res, 200, { cleared: true });
    }
    const interaction = /^\/interaction\/([A-Za-z0-9_-]+)$/.exec(pathname);
    if (!interaction) return callback(req, res);

    const entry = { kind: 'interaction', method: req.method, path: pathname };
    try {
      if (req.method === 'GET') {
        Object.assign(entry, await showInteraction(provider, req, res, interaction[1]));
      } else if (req.method === 'POST') {
        Object.assign(entry, await submitInteraction(provider, req, res));
      } else {
        sendJson(res, 405, { error: 'method not allowed' });
      }
    } catch (error) {
      entry.error = String(error?.message ?? error);
      if (!res.headersSent) sendJson(res, 400, { error: 'invalid_request', error_description: entry.error });
    }
    record({ ...entry, status: res.statusCode, ...locationDetails(res.getHeader('location')) });
  };
}

const server = http.createServer();
server.listen(Number(args.port), '127.0.0.1', async () => {
  const { port } = server.address();
  const provider = buildProvider(`http://127.0.0.1:${port}`, await signingKeys());
  server.on('request', handler(provider));
  process.stdout.write(`LISTENING ${port}\n`);
});

function stop() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
if (args['exit-with-stdin']) {
  process.stdin.on('end', stop);
  process.stdin.on('error', stop);
  process.stdin.resume();
}
