// Loaded into the conformance CLI with NODE_OPTIONS=--import (tests/conformance/run.py).
// The CLI has no option for a bearer token. Its requests leave through three doors, all covered:
//   - the global fetch (the TypeScript SDK client and most raw probes) and undici's request()
//     (the DNS-rebinding probes): both go through undici's global dispatcher, which gets an
//     interceptor here;
//   - node:http's request/get (the SEP-2243 header probes): wrapped here.
// Environment:
//   CONFORMANCE_BEARER      when set, `Authorization: Bearer <value>` is put on every request
//                           whose origin is CONFORMANCE_BEARER_ORIGIN (and on no other);
//   CONFORMANCE_STATUS_LOG  when set, one line "<status> <method> <url>" per fetch or node:http
//                           response is appended to this file.
import { appendFileSync } from "node:fs";
import http from "node:http";
import { syncBuiltinESMExports } from "node:module";
import { getGlobalDispatcher, setGlobalDispatcher } from "undici";

const token = process.env.CONFORMANCE_BEARER;
const origin = process.env.CONFORMANCE_BEARER_ORIGIN;
const statusLog = process.env.CONFORMANCE_STATUS_LOG;

function logStatus(status, method, url) {
  if (statusLog) appendFileSync(statusLog, `${status} ${method} ${url}\n`);
}

// ---- undici: fetch and request() ----------------------------------------------------------------
function withAuthorization(headers) {
  const value = `Bearer ${token}`;
  if (headers == null) return { authorization: value };
  if (Array.isArray(headers)) {
    // Flat [name, value, name, value, ...]; drop any authorization already there.
    const kept = [];
    for (let i = 0; i < headers.length; i += 2) {
      if (String(headers[i]).toLowerCase() !== "authorization") kept.push(headers[i], headers[i + 1]);
    }
    return [...kept, "authorization", value];
  }
  if (typeof headers[Symbol.iterator] === "function") {
    return withAuthorization([...headers].flat());
  }
  const kept = Object.fromEntries(Object.entries(headers).filter(([name]) => name.toLowerCase() !== "authorization"));
  return { ...kept, authorization: value };
}

if (token) {
  const bearer = (dispatch) => (opts, handler) => {
    const target = new URL(opts.origin);
    if (target.origin !== origin) return dispatch(opts, handler);
    return dispatch({ ...opts, headers: withAuthorization(opts.headers) }, handler);
  };
  setGlobalDispatcher(getGlobalDispatcher().compose(bearer));
}

const originalFetch = globalThis.fetch;
globalThis.fetch = async function fetchWithStatusLog(input, init) {
  const response = await originalFetch(input, init);
  const url = typeof input === "string" || input instanceof URL ? String(input) : input.url;
  logStatus(response.status, init?.method ?? input?.method ?? "GET", url);
  return response;
};

// ---- node:http -------------------------------------------------------------------------------------
function httpWithBearer(target, options) {
  // node:http forms: (url[, options]) or (options); options.headers may be absent.
  const isUrl = typeof target === "string" || target instanceof URL;
  const url = isUrl
    ? new URL(target)
    : new URL(`http://${target.hostname ?? target.host ?? "localhost"}:${target.port ?? 80}`);
  if (!token || url.origin !== origin) return [target, options];
  if (isUrl) {
    const opts = { ...(options ?? {}) };
    opts.headers = withAuthorization(opts.headers);
    return [target, opts];
  }
  return [{ ...target, headers: withAuthorization(target.headers) }, options];
}

for (const name of ["request", "get"]) {
  const original = http[name];
  http[name] = function (target, options, callback) {
    if (typeof options === "function") [options, callback] = [undefined, options];
    const [t, o] = httpWithBearer(target, options);
    const args = [t, ...(o === undefined ? [] : [o]), ...(callback === undefined ? [] : [callback])];
    const request = original.apply(this, args);
    request.on("response", (response) => logStatus(response.statusCode, request.method, t.path ?? String(t)));
    return request;
  };
}
syncBuiltinESMExports();
