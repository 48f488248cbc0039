// The one client of the sandboxctl REST API (/v1, described in openapi.yaml). Every call goes
// through request(): it adds the token, turns {"error":{"code","message"}} answers into ApiError,
// reports 401s (an expired session) and can be cancelled wholesale when the user changes.

/** An error answer from the API (or the network), with the server's code and message. */
export class ApiError extends Error {
  constructor(status, code, message, detail = {}) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.field = detail.field ?? null;
    this.sandboxIds = detail.sandbox_ids ?? null;
    this.retryAfter = detail.retryAfter ?? null;
  }
}

/** True for requests cancelled on purpose (page left, user signed out): not worth showing. */
export function isAbort(err) {
  return err?.name === 'AbortError';
}

let token = null;
let unauthorized = () => {};
let session = new AbortController();

export function setToken(t) {
  token = t;
}

/** Called with the ApiError when an authenticated call answers 401. */
export function onUnauthorized(fn) {
  unauthorized = fn;
}

/** Cancels every request still in flight (their answers belong to a previous user or team). */
export function cancelAll() {
  session.abort();
  session = new AbortController();
}

/**
 * One call. `body` goes as JSON, `raw` (a Blob or File) as the request body itself; `as` says how
 * to read a successful answer: 'json' (default), 'text' or 'blob'.
 */
async function request(method, path, { body, raw, query, signal, auth = true, as = 'json', cookies = false } = {}) {
  const url = new URL(path, window.location.origin);
  for (const [k, v] of Object.entries(query ?? {})) if (v !== undefined && v !== null) url.searchParams.set(k, v);
  const headers = { Accept: as === 'json' ? 'application/json' : '*/*' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (raw !== undefined) headers['Content-Type'] = 'application/octet-stream';
  const sentToken = auth ? token : null;
  if (sentToken) headers.Authorization = `Bearer ${sentToken}`;
  const signals = [session.signal, signal].filter(Boolean);
  let resp;
  try {
    resp = await fetch(url, {
      method,
      headers,
      body: raw !== undefined ? raw : body === undefined ? undefined : JSON.stringify(body),
      signal: signals.length > 1 ? AbortSignal.any(signals) : signals[0],
      cache: 'no-store',
      // Cookies only where a call needs one (the GitHub sign-in hand-off); the token is the
      // credential everywhere else.
      credentials: cookies ? 'same-origin' : 'omit',
    });
  } catch (err) {
    if (isAbort(err)) throw err;
    throw new ApiError(0, 'network_error', 'Cannot reach the sandboxctl server. Check that it is running and try again.');
  }
  if (resp.status === 204) return null;
  if (resp.ok && as !== 'json') {
    try {
      return await (as === 'blob' ? resp.blob() : resp.text());
    } catch (err) {
      if (isAbort(err)) throw err;
      throw new ApiError(0, 'network_error', 'The connection broke while reading the answer. Try again.');
    }
  }
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (resp.ok) return data;
  const e = data?.error;
  let err;
  if (e && typeof e.message === 'string') {
    err = new ApiError(resp.status, e.code, sentence(e.message), { ...e, retryAfter: resp.headers.get('Retry-After') });
    if (resp.status === 429 && err.retryAfter) err.message = `Too many attempts. Try again in ${err.retryAfter} s.`;
  } else {
    err = new ApiError(resp.status, `http_${resp.status}`, `The server answered ${resp.status} ${resp.statusText || ''}`.trim() + '.');
  }
  // A 401 on a call made with the current token means the session is over.
  if (resp.status === 401 && sentToken && sentToken === token) unauthorized(err);
  throw err;
}

/** "the sandbox is stopped, not running" → "The sandbox is stopped, not running." */
function sentence(msg) {
  const m = msg.trim();
  if (!m) return 'Something went wrong.';
  const s = m[0].toUpperCase() + m.slice(1);
  return /[.!?]$/.test(s) ? s : `${s}.`;
}

const enc = encodeURIComponent;

export const api = {
  // Accounts
  signup: (body) => request('POST', '/v1/auth/signup', { body, auth: false }),
  login: (body) => request('POST', '/v1/auth/login', { body, auth: false }),
  providers: (o) => request('GET', '/v1/auth/providers', { ...o, auth: false }),
  /** Redeems the one-time GitHub hand-off this browser holds (an HttpOnly cookie) for a session. */
  githubFinish: (o) => request('POST', '/v1/auth/github/finish', { ...o, auth: false, cookies: true }),
  logout: (o) => request('POST', '/v1/auth/logout', o),
  sessions: (o) => request('GET', '/v1/auth/sessions', o).then((r) => r.sessions),
  endSession: (id, o) => request('DELETE', `/v1/auth/sessions/${enc(id)}`, o),
  changePassword: (currentPassword, newPassword, o) => request('POST', '/v1/auth/password', { ...o, body: { current_password: currentPassword, new_password: newPassword } }),
  me: (o) => request('GET', '/v1/me', o),
  switchTeam: (teamId, o) => request('POST', '/v1/auth/switch-team', { ...o, body: { team_id: teamId } }),

  // Teams
  teams: (o) => request('GET', '/v1/teams', o).then((r) => r.teams),
  createTeam: (name, o) => request('POST', '/v1/teams', { ...o, body: { name } }),
  team: (id, o) => request('GET', `/v1/teams/${enc(id)}`, o),
  renameTeam: (id, name, o) => request('PATCH', `/v1/teams/${enc(id)}`, { ...o, body: { name } }),
  deleteTeam: (id, o) => request('DELETE', `/v1/teams/${enc(id)}`, o),
  invites: (id, o) => request('GET', `/v1/teams/${enc(id)}/invites`, o).then((r) => r.invites),
  createInvite: (id, role, o) => request('POST', `/v1/teams/${enc(id)}/invites`, { ...o, body: { role } }),
  revokeInvite: (id, inviteId, o) => request('DELETE', `/v1/teams/${enc(id)}/invites/${enc(inviteId)}`, o),
  acceptInvite: (token, o) => request('POST', '/v1/invites/accept', { ...o, body: { token } }),
  setRole: (id, userId, role, o) => request('PATCH', `/v1/teams/${enc(id)}/members/${enc(userId)}`, { ...o, body: { role } }),
  removeMember: (id, userId, o) => request('DELETE', `/v1/teams/${enc(id)}/members/${enc(userId)}`, o),
  leaveTeam: (id, o) => request('POST', `/v1/teams/${enc(id)}/leave`, o),

  // API keys
  keys: (o) => request('GET', '/v1/api-keys', o).then((r) => r.keys),
  createKey: (name, o) => request('POST', '/v1/api-keys', { ...o, body: { name } }),
  revokeKey: (id, o) => request('DELETE', `/v1/api-keys/${enc(id)}`, o),

  // Hosts
  hosts: (o) => request('GET', '/v1/hosts', o).then((r) => r.hosts),
  host: (id, o) => request('GET', `/v1/hosts/${enc(id)}`, o),
  createHost: (body, o) => request('POST', '/v1/hosts', { ...o, body }),
  hostToken: (id, o) => request('POST', `/v1/hosts/${enc(id)}/token`, o),
  setHostTags: (id, tags, o) => request('PUT', `/v1/hosts/${enc(id)}/tags`, { ...o, body: { tags } }),
  drainHost: (id, o) => request('POST', `/v1/hosts/${enc(id)}/drain`, o),
  hostDeletePreview: (id, o) => request('GET', `/v1/hosts/${enc(id)}/delete-preview`, o),
  deleteHost: (id, force, o) => request('DELETE', `/v1/hosts/${enc(id)}`, { ...o, query: force ? { force: 'true' } : undefined }),

  // Sandboxes
  sandboxes: (o) => request('GET', '/v1/sandboxes', o).then((r) => r.sandboxes),
  sandbox: (id, o) => request('GET', `/v1/sandboxes/${enc(id)}`, o),
  createSandbox: (body, o) => request('POST', '/v1/sandboxes', { ...o, body }),
  deleteSandbox: (id, o) => request('DELETE', `/v1/sandboxes/${enc(id)}`, o),
  exec: (id, body, o) => request('POST', `/v1/sandboxes/${enc(id)}/exec`, { ...o, body }),
  pauseSandbox: (id, o) => request('POST', `/v1/sandboxes/${enc(id)}/pause`, o),
  resumeSandbox: (id, o) => request('POST', `/v1/sandboxes/${enc(id)}/resume`, o),
  setSandboxNetwork: (id, policy, o) => request('PUT', `/v1/sandboxes/${enc(id)}/network`, { ...o, body: policy }),
  setSandboxTimeout: (id, timeoutSec, o) => request('POST', `/v1/sandboxes/${enc(id)}/timeout`, { ...o, body: { timeout_sec: timeoutSec } }),
  sandboxMetrics: (id, start, o) => request('GET', `/v1/sandboxes/${enc(id)}/metrics`, { ...o, query: { start } }),
  sandboxLogs: (id, o) => request('GET', `/v1/sandboxes/${enc(id)}/logs`, { ...o, as: 'text' }),
  /** A plain GET of the exec stream route: its error says why a WebSocket could not open. */
  probeExecStream: (id, o) => request('GET', `/v1/sandboxes/${enc(id)}/exec/stream`, o),

  // A sandbox's files
  listFiles: (id, path, o) => request('GET', `/v1/sandboxes/${enc(id)}/files/list`, { ...o, query: { path } }),
  downloadUrl: (id, path, o) => request('POST', `/v1/sandboxes/${enc(id)}/files/download-url`, { ...o, query: { path } }),
  writeFile: (id, path, blob, o) => request('PUT', `/v1/sandboxes/${enc(id)}/files`, { ...o, query: { path }, raw: blob }),
  makeDir: (id, path, o) => request('POST', `/v1/sandboxes/${enc(id)}/files/mkdir`, { ...o, query: { path } }),
  removeFile: (id, path, recursive, o) => request('DELETE', `/v1/sandboxes/${enc(id)}/files`, { ...o, query: { path, recursive: recursive ? 'true' : undefined } }),

  // Templates and snapshots
  templates: (o) => request('GET', '/v1/templates', o).then((r) => r.templates),
  snapshot: (sandboxId, name, overwrite, o) => request('POST', '/v1/snapshots', { ...o, body: { sandbox_id: sandboxId, name }, query: overwrite ? { overwrite: 'true' } : undefined }),
  deleteTemplate: (id, o) => request('DELETE', `/v1/templates/${enc(id)}`, o),
  buildTemplate: (name, o) => request('POST', '/v1/templates', { ...o, body: { name } }),
  buildStatus: (name, o) => request('GET', `/v1/templates/${enc(name)}/build`, o),
};

/** The URL of a sandbox's exec WebSocket (no credentials in it: see execStreamProtocols). */
export function execStreamUrl(id) {
  const url = new URL(`/v1/sandboxes/${enc(id)}/exec/stream`, window.location.origin);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  return url.toString();
}

/**
 * The subprotocols to open the exec WebSocket with. Browsers cannot set headers on a WebSocket,
 * so the token travels as the subprotocol `bearer.TOKEN` beside `sandboxctl.v1` (the one the
 * server answers with); never in the URL, which logs and histories keep.
 */
export function execStreamProtocols() {
  return token ? ['sandboxctl.v1', `bearer.${token}`] : ['sandboxctl.v1'];
}
