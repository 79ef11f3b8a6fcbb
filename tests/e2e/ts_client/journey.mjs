// A real MCP host in a few lines, on the official TypeScript SDK, for the gateway's end-to-end
// journeys (tests/e2e/test_first_contact.py). It starts with nothing but the gateway's URL and
// the SDK's own OAuth machinery (StreamableHTTPClientTransport + an OAuthClientProvider), and a
// headless "user" who completes the authorization server's login and consent forms.
//
//   node journey.mjs --url URL --sdk v1|v2 [--era 2025|2026] [--list-driven] STEP...
//
// STEP is `list` (tools/list) or `call:<tool>[:<json arguments>]` (tools/call). With
// --list-driven the host calls only tools it saw in its latest `list` (as desktop hosts and the
// Inspector CLI do); a call of an unlisted tool is reported as `not_listed` and the journey stops.
//
// The SDKs:
//   v1: @modelcontextprotocol/sdk 1.x, which speaks the 2025 protocol era only.
//   v2: @modelcontextprotocol/client 2.x; --era 2025 is its `legacy` mode (initialize), --era 2026
//       pins protocol 2026-07-28.
//
// What a host does when the SDK asks for the user (the SDK's documented contract): the call
// rejects with UnauthorizedError after redirectToAuthorization; the host waits for the redirect
// back, hands its code to transport.finishAuth(), and tries again (connect: with a new transport,
// as the SDK's own examples do; a call: on the same connection).
//
// Output: one JSON object per line on stdout, in the order things happened:
//   {"event":"http", method, url, status, bearer, www_authenticate, request_scope}  every request
//        the SDK sent (MCP and OAuth alike); `bearer` is the access token it carried, if any;
//        `request_scope` the `scope` of a registration or token request body
//   {"event":"authorization", url, params}    the user was sent to the authorization server
//   {"event":"client_information", client_id, scope}     what registration returned
//   {"event":"tokens", scope, access_token, refresh}     a token set the SDK stored
//   {"event":"reauthorized", during}                     the host finished an authorization
//   {"event":"list", tools} | {"event":"result", tool, is_error, structured, text}
//   {"event":"not_listed", tool, listed}  |  {"event":"error", message}  |  {"event":"done"}
// Exit status 0 when the journey ran to its end (a tool error is a result, not a failure).

import { parseArgs } from 'node:util';

const { values: args, positionals: steps } = parseArgs({
  allowPositionals: true,
  options: {
    url: { type: 'string' },
    sdk: { type: 'string', default: 'v2' },
    era: { type: 'string', default: '2025' },
    'list-driven': { type: 'boolean', default: false },
  },
});

const REDIRECT_URI = 'http://127.0.0.1:9/oauth/callback'; // RFC 8252 §7.3; nothing listens there
const MAX_FORM_STEPS = 20;

function emit(event, fields = {}) {
  process.stdout.write(`${JSON.stringify({ event, ...fields })}\n`);
}

// ---------------------------------------------------------------------------------------------
// The SDK, by major version

async function loadSdk(sdk, era) {
  if (sdk === 'v1') {
    if (era !== '2025') throw new Error('SDK 1.x speaks the 2025 protocol era only');
    const { Client } = await import('@modelcontextprotocol/sdk/client/index.js');
    const { StreamableHTTPClientTransport } = await import('@modelcontextprotocol/sdk/client/streamableHttp.js');
    const { UnauthorizedError } = await import('@modelcontextprotocol/sdk/client/auth.js');
    return {
      Client,
      StreamableHTTPClientTransport,
      UnauthorizedError,
      clientOptions: {},
      // 1.x takes the bare code (the host checks state itself, see HeadlessUser).
      callbackArgument: (callback) => callback.get('code'),
    };
  }
  if (sdk === 'v2') {
    const { Client, StreamableHTTPClientTransport, UnauthorizedError } = await import('@modelcontextprotocol/client');
    const mode = era === '2026' ? { pin: '2026-07-28' } : 'legacy';
    return {
      Client,
      StreamableHTTPClientTransport,
      UnauthorizedError,
      clientOptions: { versionNegotiation: { mode } },
      // 2.x takes the whole callback, so it can check `iss` (RFC 9207) itself.
      callbackArgument: (callback) => callback,
    };
  }
  throw new Error(`unknown --sdk ${sdk}`);
}

// ---------------------------------------------------------------------------------------------
// The wire: every request the SDK sends goes through this fetch

function bodyScope(init) {
  const body = init?.body;
  if (typeof body === 'string') {
    try {
      const parsed = JSON.parse(body);
      return typeof parsed?.scope === 'string' ? parsed.scope : undefined;
    } catch {
      return new URLSearchParams(body).get('scope') ?? undefined;
    }
  }
  if (body instanceof URLSearchParams) return body.get('scope') ?? undefined;
  return undefined;
}

function recordingFetch() {
  return async (input, init) => {
    const request = new Request(input, init);
    const response = await fetch(input, init);
    const authorization = request.headers.get('authorization');
    emit('http', {
      method: request.method,
      url: request.url,
      status: response.status,
      bearer: authorization?.startsWith('Bearer ') ? authorization.slice('Bearer '.length) : null,
      www_authenticate: response.headers.get('www-authenticate'),
      request_scope: bodyScope(init),
    });
    return response;
  };
}

// ---------------------------------------------------------------------------------------------
// The user: follows the authorization server's redirects and posts its forms unchanged

class HeadlessUser {
  constructor() {
    this.cookies = new Map(); // a browser's cookie jar for the authorization server (one host)
    this.callback = undefined;
  }

  cookieHeader() {
    return [...this.cookies].map(([name, value]) => `${name}=${value}`).join('; ');
  }

  keepCookies(response) {
    for (const line of response.headers.getSetCookie()) {
      const [pair] = line.split(';');
      const at = pair.indexOf('=');
      const name = pair.slice(0, at).trim();
      const value = pair.slice(at + 1).trim();
      if (/expires=Thu, 01 Jan 1970/i.test(line) || value === '') this.cookies.delete(name);
      else this.cookies.set(name, value);
    }
  }

  // The first <form> of a page: its action and the values of its inputs (the AS's pages are ours).
  static firstForm(html) {
    const form = /<form method="post" action="([^"]+)">([\s\S]*?)<\/form>/.exec(html);
    if (!form) return undefined;
    const fields = {};
    for (const input of form[2].matchAll(/<input type="[^"]*" name="([^"]+)" value="([^"]*)">/g)) {
      fields[input[1]] = input[2].replace(/&#(\d+);/g, (_, code) => String.fromCharCode(Number(code)));
    }
    return { action: form[1], fields };
  }

  async authorize(authorizationUrl) {
    const expectedState = authorizationUrl.searchParams.get('state');
    let method = 'GET';
    let url = authorizationUrl.href;
    let body;
    for (let step = 0; step < MAX_FORM_STEPS; step += 1) {
      if (url.startsWith(REDIRECT_URI)) {
        const callback = new URL(url).searchParams;
        if (callback.get('state') !== expectedState) throw new Error(`state mismatch at ${url}`);
        if (!callback.get('code')) throw new Error(`redirected back without a code: ${url}`);
        this.callback = callback;
        return;
      }
      const headers = { cookie: this.cookieHeader() };
      if (body) headers['content-type'] = 'application/x-www-form-urlencoded';
      const response = await fetch(url, { method, headers, body, redirect: 'manual' });
      this.keepCookies(response);
      if ([302, 303, 307].includes(response.status)) {
        await response.body?.cancel();
        url = new URL(response.headers.get('location'), url).href;
        method = 'GET';
        body = undefined;
        continue;
      }
      const html = await response.text();
      if (response.status !== 200) throw new Error(`authorization server answered ${response.status} at ${url}: ${html.slice(0, 500)}`);
      const form = HeadlessUser.firstForm(html);
      if (!form) throw new Error(`no form to submit at ${url}: ${html.slice(0, 500)}`);
      method = 'POST';
      url = new URL(form.action, url).href;
      body = new URLSearchParams(form.fields).toString();
    }
    throw new Error(`authorization did not come back within ${MAX_FORM_STEPS} steps`);
  }
}

// ---------------------------------------------------------------------------------------------
// The OAuthClientProvider: in-memory storage, the user above as the browser

class MemoryOAuthProvider {
  constructor(user) {
    this.user = user;
    this._clientInformation = undefined;
    this._tokens = undefined;
    this._codeVerifier = undefined;
    this._discoveryState = undefined;
  }

  get redirectUrl() {
    return REDIRECT_URI;
  }

  get clientMetadata() {
    // What a native host registers: a public client with a loopback redirect. No scope of its
    // own: the SDK registers with the scope of the challenge that started the flow.
    return {
      client_name: 'gateway e2e TypeScript host',
      redirect_uris: [REDIRECT_URI],
      token_endpoint_auth_method: 'none',
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
    };
  }

  clientInformation() {
    return this._clientInformation;
  }

  saveClientInformation(information) {
    this._clientInformation = information;
    emit('client_information', { client_id: information.client_id, scope: information.scope ?? null });
  }

  tokens() {
    return this._tokens;
  }

  saveTokens(tokens) {
    this._tokens = tokens;
    emit('tokens', { scope: tokens.scope ?? null, access_token: tokens.access_token, refresh: Boolean(tokens.refresh_token) });
  }

  async redirectToAuthorization(authorizationUrl) {
    emit('authorization', { url: authorizationUrl.href, params: Object.fromEntries(authorizationUrl.searchParams) });
    await this.user.authorize(authorizationUrl);
  }

  saveCodeVerifier(codeVerifier) {
    this._codeVerifier = codeVerifier;
  }

  codeVerifier() {
    if (!this._codeVerifier) throw new Error('no code verifier saved');
    return this._codeVerifier;
  }

  saveDiscoveryState(state) {
    this._discoveryState = state;
  }

  discoveryState() {
    return this._discoveryState;
  }

  invalidateCredentials(scope) {
    if (scope === 'all' || scope === 'client') this._clientInformation = undefined;
    if (scope === 'all' || scope === 'tokens') this._tokens = undefined;
    if (scope === 'all' || scope === 'verifier') this._codeVerifier = undefined;
    if (scope === 'all' || scope === 'discovery') this._discoveryState = undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// The host

class Host {
  constructor(sdk, url) {
    this.sdk = sdk;
    this.url = new URL(url);
    this.user = new HeadlessUser();
    this.provider = new MemoryOAuthProvider(this.user);
    this.fetch = recordingFetch();
    this.client = undefined;
    this.transport = undefined;
    this.listed = undefined;
  }

  isUnauthorized(error) {
    return error instanceof this.sdk.UnauthorizedError || error?.name === 'UnauthorizedError';
  }

  async finishAuthorization(transport, during) {
    if (!this.user.callback) throw new Error(`the SDK asked for authorization during ${during} but the user was never sent`);
    const callback = this.user.callback;
    this.user.callback = undefined;
    await transport.finishAuth(this.sdk.callbackArgument(callback));
    emit('reauthorized', { during });
  }

  newConnection() {
    const transport = new this.sdk.StreamableHTTPClientTransport(this.url, { authProvider: this.provider, fetch: this.fetch });
    const client = new this.sdk.Client({ name: 'gateway-e2e-ts-host', version: '0' }, this.sdk.clientOptions);
    return { client, transport };
  }

  async connect() {
    for (let attempt = 0; ; attempt += 1) {
      const { client, transport } = this.newConnection();
      try {
        await client.connect(transport);
        this.client = client;
        this.transport = transport;
        return;
      } catch (error) {
        if (!this.isUnauthorized(error) || attempt > 0) throw error;
        await this.finishAuthorization(transport, 'connect');
        await client.close().catch(() => {});
      }
    }
  }

  // A request that may send the user to the authorization server once (401 or 403 step-up).
  async withAuthorization(during, operation) {
    try {
      return await operation();
    } catch (error) {
      if (!this.isUnauthorized(error)) throw error;
      await this.finishAuthorization(this.transport, during);
      return operation();
    }
  }

  async list() {
    const result = await this.withAuthorization('list', () => this.client.listTools());
    this.listed = result.tools.map((tool) => tool.name);
    emit('list', { tools: this.listed });
  }

  async call(tool, toolArguments, listDriven) {
    if (listDriven && !(this.listed ?? []).includes(tool)) {
      emit('not_listed', { tool, listed: this.listed ?? null });
      return false;
    }
    const result = await this.withAuthorization(`call:${tool}`, () =>
      this.client.callTool({ name: tool, arguments: toolArguments }),
    );
    const text = (result.content ?? []).filter((item) => item.type === 'text').map((item) => item.text).join('');
    emit('result', { tool, is_error: Boolean(result.isError), structured: result.structuredContent ?? null, text });
    return true;
  }
}

async function main() {
  if (!args.url) throw new Error('--url is required');
  const host = new Host(await loadSdk(args.sdk, args.era), args.url);
  await host.connect();
  try {
    for (const step of steps) {
      if (step === 'list') {
        await host.list();
        continue;
      }
      const match = /^call:([^:]+)(?::(.*))?$/.exec(step);
      if (!match) throw new Error(`unknown step ${step}`);
      if (!(await host.call(match[1], match[2] ? JSON.parse(match[2]) : {}, args['list-driven']))) break;
    }
  } finally {
    await host.client.close().catch(() => {});
  }
  emit('done');
}

main().then(
  () => process.exit(0),
  (error) => {
    emit('error', { message: String(error?.stack ?? error) });
    process.exit(1);
  },
);
