/**
 * `@skewguard/fetch`: the browser half of skewguard.
 *
 * `createPinnedFetch` wraps `fetch` so that every API call the frontend makes carries the
 * deployment ID it was built with (in a request header, `X-Deployment-ID` by default). The
 * load balancer's pin rules then route the call to the backend deployment that frontend was
 * built against, for as long as that deployment runs.
 *
 * The pin is a header, not a cookie: it lives in the JavaScript of one tab, so a tab that loads
 * a newer build never re-pins a tab that is still running an older one.
 *
 * A tab learns that its version is gone in one of two ways: the load balancer's "retired"
 * answer (`409 {"error":"deployment_retired","currentDeploymentId":"..."}`, with
 * `afterWindow: retired`), or an answer served by another deployment than its pin (the
 * backend's `X-Deployment-ID` response header; a fall-through to production). Either makes the
 * tab *stale*: the wrapper calls `onStale` once and, depending on `reload`, reloads the tab
 * itself. It never reloads a tab more often than `reloadBudget` allows (kept in
 * `sessionStorage`), so a version that has disappeared cannot trap a tab in a reload loop.
 *
 * No runtime dependencies; works wherever `fetch`, `Headers`, `Response` and `URL` exist.
 */

/** The header skewguard's pin rules match by default, and the one backends name themselves in. */
export const DEFAULT_HEADER_NAME = 'X-Deployment-ID';

/** The HTTP status of skewguard's "this version was retired" answer. */
export const RETIRED_STATUS = 409;

/** The `error` field of skewguard's "this version was retired" answer. */
export const RETIRED_ERROR = 'deployment_retired';

/** The `sessionStorage` key under which the times of the wrapper's reloads are kept. */
export const RELOAD_STORAGE_KEY = 'skewguard:reloads';

/** How many reloads a tab may make, and within how long. */
export interface ReloadBudget {
  /** At most this many reloads (0: never reload)… */
  reloads: number;
  /** …within any period of this many milliseconds. */
  perMs: number;
}

/** One reload per 10 minutes. */
export const DEFAULT_RELOAD_BUDGET: Readonly<ReloadBudget> = Object.freeze({ reloads: 1, perMs: 10 * 60_000 });

/** How long without user input makes a tab idle, for `reload: 'idle'`: one minute. */
export const DEFAULT_IDLE_MS = 60_000;

/**
 * What the wrapper does when the tab turns stale (after calling `onStale`):
 * - `prompt`: nothing more; the app offers a reload and calls `reload()`;
 * - `idle`: reloads once the tab is hidden, or the user has not touched it for `idleMs`;
 * - `immediate`: reloads at once.
 * Every reload, whoever asks for it, is within `reloadBudget`.
 */
export type ReloadStrategy = 'prompt' | 'idle' | 'immediate';

const STRATEGIES: readonly ReloadStrategy[] = ['prompt', 'idle', 'immediate'];

/** What skewguard's "this version was retired" answer says. */
export interface RetiredAnswer {
  /** The deployment ID production runs now, when the answer names it. */
  currentDeploymentId?: string;
}

/** Passed to `onSkew`: a pinned request was answered by another deployment than its pin. */
export interface SkewInfo {
  /** This tab's pin: the deployment ID this frontend was built with. */
  deploymentId: string;
  /** The deployment that answered (the answer's `servedByHeader`). */
  servedBy: string;
  /** That answer, as also returned to the caller (unread). */
  response: Response;
}

/** Passed to `onStale`: this tab's version no longer answers its pin. */
export interface StaleInfo {
  /**
   * `retired`: the load balancer's retired answer (`afterWindow: retired`); `skew`: another
   * deployment answered (a fall-through to production).
   */
  reason: 'retired' | 'skew';
  /** This tab's pin: the deployment ID this frontend was built with. */
  deploymentId: string;
  /** The deployment production runs now, when known (named by the retired answer, or the one that answered). */
  currentDeploymentId?: string;
  /** The answer that showed it, as also returned to the caller (unread). */
  response: Response;
  /**
   * Whether `reloadBudget` allowed a reload when the tab turned stale. `false` means a reload
   * already happened recently and did not help (or there is no `sessionStorage` to keep the
   * budget in): the wrapper will not reload, and the app should say so rather than offer one.
   */
  canReload: boolean;
}

/** The shape of `fetch`. */
export type FetchFunction = (input: RequestInfo | URL, init?: RequestInit) => Promise<Response>;

export interface PinnedFetchOptions {
  /**
   * The deployment ID of this build, usually injected at build time
   * (`import.meta.env.VITE_DEPLOYMENT_ID`). Letters, digits, `.`, `_` and `-`, at most 128
   * characters. `undefined`, `null` or `''` turns pinning off (a local development build):
   * requests go out unchanged and the tab never turns stale.
   */
  deploymentId: string | null | undefined;
  /** The request header that carries the pin. Default `X-Deployment-ID`. */
  headerName?: string;
  /**
   * The hooks' `queryParam` setting (e.g. `dpl`), if set: `pinnedUrl()` then adds it to URLs
   * for requests that cannot carry a header (`EventSource`, `WebSocket`, `<img>`…).
   */
  queryParam?: string;
  /**
   * The response header in which the backend names the deployment that served the answer.
   * Default `X-Deployment-ID`. An answer to a pinned request that names another deployment is
   * skew: `onSkew`, and the tab turns stale. Answers without it are not checked.
   */
  servedByHeader?: string;
  /**
   * Called once per wrapper, with the first answer that another deployment served (a silent
   * fall-through made visible). An exception thrown here is reported and never fails the call.
   */
  onSkew?: (info: SkewInfo) => void;
  /**
   * Called once per wrapper, when the tab turns stale (a retired answer, or skew), before the
   * `reload` strategy acts. With `prompt`, offer the user a reload that calls `reload()`. An
   * exception thrown here is reported and never fails the call.
   */
  onStale?: (info: StaleInfo) => void;
  /** What to do when the tab turns stale: `prompt` (default), `idle` or `immediate`. */
  reload?: ReloadStrategy;
  /** At most how many reloads per how long. Default: 1 per 10 minutes. */
  reloadBudget?: ReloadBudget;
  /** For `reload: 'idle'`: how long without user input makes the tab idle. Default 60 s. */
  idleMs?: number;
  /** The `fetch` to wrap. Default: `globalThis.fetch`, looked up at each call. */
  fetch?: FetchFunction;
  /**
   * The URL relative request URLs resolve against, and whose origin is "same origin".
   * Default: `location.href` in a browser.
   */
  baseUrl?: string | URL;
  /**
   * More origins whose requests carry the pin (e.g. `https://api.example.com`). A cross-origin
   * API must allow the header in CORS (`Access-Control-Allow-Headers`) and expose the answer's
   * headers you read (`Access-Control-Expose-Headers`).
   */
  origins?: readonly string[];
  /**
   * Decides which requests carry the pin, replacing the same-origin-plus-`origins` rule. Gets
   * the request URL resolved against `baseUrl` (`ws:`/`wss:` as `http:`/`https:`). Relative URLs
   * that cannot be resolved (no `baseUrl`, no `location`) are always pinned: they can only go to
   * the page's own origin.
   */
  shouldPin?: (url: URL) => boolean;
}

/** A `fetch`-compatible function that pins requests, plus what it knows. */
export interface PinnedFetch extends FetchFunction {
  /** The deployment ID it sends, or `undefined` when pinning is off. */
  readonly deploymentId: string | undefined;
  /** The header it sends it in. */
  readonly headerName: string;
  /** The query parameter `pinnedUrl()` adds, if any. */
  readonly queryParam: string | undefined;
  /** The first answer another deployment served; `undefined` until then. */
  readonly skew: SkewInfo | undefined;
  /** Set from the moment the tab turned stale on; `undefined` until then. */
  readonly stale: StaleInfo | undefined;
  /**
   * Reloads the tab if `reloadBudget` allows it, and says whether it did. Use it for every
   * reload the app offers, so that the budget holds whoever asks.
   */
  reload(): boolean;
  /**
   * `url` with the query pin (`queryParam=deploymentId`) added, for requests that cannot carry
   * the header: `new EventSource(apiFetch.pinnedUrl('/v2/events'))`, WebSocket URLs, `<img>`
   * and other asset URLs. Unchanged when there is no `queryParam` or deployment ID, when the
   * URL would not be pinned (another origin), or when it already has the parameter.
   */
  pinnedUrl(url: string | URL): string;
}

const DEPLOYMENT_ID = /^[A-Za-z0-9._-]{1,128}$/;
const HEADER_TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const QUERY_PARAM = /^[A-Za-z0-9._~-]{1,64}$/;
const ABSOLUTE_OR_PROTOCOL_RELATIVE = /^([a-z][a-z0-9+.-]*:|\/\/)/i;
const USER_INPUT = ['pointerdown', 'pointermove', 'keydown', 'wheel', 'touchstart', 'scroll'];

/**
 * Wraps `fetch` so that requests to the app's own origin (and `origins`) carry the build's
 * deployment ID in `headerName`, checks who answered them, and handles the tab turning stale.
 *
 * A header the caller set (in `init.headers`, or on a `Request` when `init` has no headers)
 * is never replaced; such a request is only checked if it carries this build's ID. Requests
 * that are not pinned go out exactly as given.
 */
export function createPinnedFetch(options: PinnedFetchOptions): PinnedFetch {
  const headerName = options.headerName ?? DEFAULT_HEADER_NAME;
  const servedByHeader = options.servedByHeader ?? DEFAULT_HEADER_NAME;
  for (const [what, name] of [
    ['header name', headerName],
    ['servedByHeader', servedByHeader],
  ]) {
    if (!HEADER_TOKEN.test(name)) {
      throw new TypeError(`@skewguard/fetch: invalid ${what} ${JSON.stringify(name)}`);
    }
  }
  const deploymentId = options.deploymentId || undefined;
  if (deploymentId !== undefined && !DEPLOYMENT_ID.test(deploymentId)) {
    throw new TypeError(
      `@skewguard/fetch: invalid deployment ID ${JSON.stringify(deploymentId)} ` +
        '(letters, digits, ".", "_" and "-", at most 128 characters)',
    );
  }
  const queryParam = options.queryParam;
  if (queryParam !== undefined && !QUERY_PARAM.test(queryParam)) {
    throw new TypeError(
      `@skewguard/fetch: invalid queryParam ${JSON.stringify(queryParam)} (letters, digits and -_.~, at most 64)`,
    );
  }
  const strategy = options.reload ?? 'prompt';
  if (!STRATEGIES.includes(strategy)) {
    throw new TypeError(`@skewguard/fetch: reload must be one of ${STRATEGIES.join(', ')}, not ${String(strategy)}`);
  }
  const budget = options.reloadBudget ?? DEFAULT_RELOAD_BUDGET;
  if (!(Number.isInteger(budget.reloads) && budget.reloads >= 0 && budget.perMs > 0)) {
    throw new TypeError('@skewguard/fetch: reloadBudget needs a whole number of reloads >= 0 and perMs > 0');
  }
  const idleMs = options.idleMs ?? DEFAULT_IDLE_MS;
  if (!(idleMs >= 0)) throw new TypeError('@skewguard/fetch: idleMs must be >= 0');

  const base = options.baseUrl?.toString() ?? currentLocation();
  const shouldPin = options.shouldPin ?? sameOrigin(base, options.origins ?? []);
  const call = fetchFunction(options.fetch);
  const lastInput = strategy === 'idle' && deploymentId !== undefined ? watchInput() : undefined;
  let skew: SkewInfo | undefined;
  let stale: StaleInfo | undefined;

  const reload = (): boolean => reloadWithin(budget);

  const turnStale = (reason: StaleInfo['reason'], current: string | undefined, response: Response) => {
    if (stale !== undefined || deploymentId === undefined) return;
    stale = { reason, deploymentId, response, canReload: reloadAllowed(budget) };
    if (current !== undefined) stale.currentDeploymentId = current;
    notify(options.onStale, stale);
    if (strategy === 'immediate') reload();
    else if (strategy === 'idle' && lastInput !== undefined) reloadWhenIdle(lastInput, idleMs, reload);
  };

  /** Learns from the answer to a request that carried this build's ID. */
  const inspect = async (response: Response, id: string) => {
    const servedBy = response.headers.get(servedByHeader)?.trim();
    if (servedBy && !sameId(servedBy, id)) {
      if (skew === undefined) {
        skew = { deploymentId: id, servedBy, response };
        notify(options.onSkew, skew);
      }
      turnStale('skew', servedBy, response);
      return;
    }
    if (stale !== undefined) return;
    const answer = await readRetiredAnswer(response);
    // Another call may have turned the tab stale while this one read its body.
    if (answer !== undefined) turnStale('retired', answer.currentDeploymentId, response);
  };

  const pinnedFetch = async (input: RequestInfo | URL, init?: RequestInit): Promise<Response> => {
    if (deploymentId === undefined || !pins(requestUrl(input), base, shouldPin)) {
      return call(input, init);
    }
    const { init: pinnedInit, sent } = withHeader(input, init, headerName, deploymentId);
    const response = await call(input, pinnedInit);
    if (sameId(sent, deploymentId)) await inspect(response, deploymentId);
    return response;
  };

  const pinnedUrl = (url: string | URL): string => {
    const raw = typeof url === 'string' ? url : url.href;
    if (deploymentId === undefined || queryParam === undefined) return raw;
    if (!pins(raw, base, (resolved) => shouldPin(httpEquivalent(resolved)))) return raw;
    return withQueryParam(raw, queryParam, deploymentId);
  };

  Object.defineProperties(pinnedFetch, {
    deploymentId: { value: deploymentId, enumerable: true },
    headerName: { value: headerName, enumerable: true },
    queryParam: { value: queryParam, enumerable: true },
    skew: { get: () => skew, enumerable: true },
    stale: { get: () => stale, enumerable: true },
    reload: { value: reload },
    pinnedUrl: { value: pinnedUrl },
  });
  return pinnedFetch as PinnedFetch;
}

/**
 * Whether `response` is skewguard's "this version was retired" answer (status 409, a JSON body
 * with `"error": "deployment_retired"`), and what it says. Reads a clone: `response` stays
 * unread. For apps that make their calls without `createPinnedFetch`.
 */
export async function readRetiredAnswer(response: Response): Promise<RetiredAnswer | undefined> {
  if (response.status !== RETIRED_STATUS) return undefined;
  const contentType = response.headers.get('content-type') ?? '';
  if (!/^\s*application\/([\w.+-]+\+)?json\s*(;|$)/i.test(contentType)) return undefined;
  let body: unknown;
  try {
    body = await response.clone().json();
  } catch {
    return undefined;
  }
  if (typeof body !== 'object' || body === null) return undefined;
  const { error, currentDeploymentId } = body as Record<string, unknown>;
  if (error !== RETIRED_ERROR) return undefined;
  return typeof currentDeploymentId === 'string' ? { currentDeploymentId } : {};
}

/** Deployment IDs are matched case-insensitively, as the load balancer matches them. */
function sameId(a: string, b: string): boolean {
  return a.toLowerCase() === b.toLowerCase();
}

function currentLocation(): string | undefined {
  const location = (globalThis as { location?: { href?: unknown } }).location;
  return typeof location?.href === 'string' ? location.href : undefined;
}

function fetchFunction(custom: FetchFunction | undefined): FetchFunction {
  if (custom !== undefined) {
    // `window.fetch` passed as a value throws "Illegal invocation" unless called on a window.
    return (input, init) => custom.call(globalThis, input, init);
  }
  return (input, init) => {
    if (typeof globalThis.fetch !== 'function') {
      return Promise.reject(new TypeError('@skewguard/fetch: no global fetch; pass options.fetch'));
    }
    return globalThis.fetch(input, init);
  };
}

function sameOrigin(base: string | undefined, origins: readonly string[]): (url: URL) => boolean {
  const allowed = new Set(origins.map((origin) => new URL(origin).origin));
  if (base !== undefined) allowed.add(new URL(base).origin);
  return (url) => url.origin !== 'null' && allowed.has(url.origin);
}

/** A WebSocket URL as the HTTP(S) URL of its handshake, whose origin is the page's. */
function httpEquivalent(url: URL): URL {
  if (url.protocol !== 'ws:' && url.protocol !== 'wss:') return url;
  const http = new URL(url.href);
  http.protocol = url.protocol === 'ws:' ? 'http:' : 'https:';
  return http;
}

function isRequest(input: RequestInfo | URL): input is Request {
  return typeof input === 'object' && !(input instanceof URL) && typeof input.url === 'string';
}

function requestUrl(input: RequestInfo | URL): string {
  if (typeof input === 'string') return input;
  if (input instanceof URL) return input.href;
  return input.url;
}

function pins(raw: string, base: string | undefined, shouldPin: (url: URL) => boolean): boolean {
  let url: URL;
  try {
    url = new URL(raw, base);
  } catch {
    // Only a relative URL without a base to resolve it against gets here: it can only go to
    // the page's own origin.
    return !ABSOLUTE_OR_PROTOCOL_RELATIVE.test(raw);
  }
  return shouldPin(url);
}

/**
 * The `init` to send and the pin the request carries. Fetch's own rule decides where the
 * request's headers come from: `init.headers` when given (it replaces a `Request`'s headers),
 * else the `Request`'s. When the caller already set the header, their `init` goes out as given.
 */
function withHeader(
  input: RequestInfo | URL,
  init: RequestInit | undefined,
  name: string,
  value: string,
): { init: RequestInit | undefined; sent: string } {
  let headers: Headers;
  if (init?.headers !== undefined) {
    headers = new Headers(init.headers);
  } else if (isRequest(input)) {
    headers = new Headers(input.headers);
  } else {
    headers = new Headers();
  }
  const set = headers.get(name);
  if (set !== null) return { init, sent: set };
  headers.set(name, value);
  return { init: { ...init, headers }, sent: value };
}

/** `raw` with `name=value` added to its query, unless it has `name` already; keeps the rest as written. */
function withQueryParam(raw: string, name: string, value: string): string {
  const hashAt = raw.indexOf('#');
  const beforeHash = hashAt === -1 ? raw : raw.slice(0, hashAt);
  const hash = hashAt === -1 ? '' : raw.slice(hashAt);
  const queryAt = beforeHash.indexOf('?');
  const query = queryAt === -1 ? '' : beforeHash.slice(queryAt + 1);
  if (new URLSearchParams(query).has(name)) return raw;
  const separator = queryAt === -1 ? '?' : query === '' || query.endsWith('&') ? '' : '&';
  return `${beforeHash}${separator}${name}=${encodeURIComponent(value)}${hash}`;
}

function sessionStore(): Pick<Storage, 'getItem' | 'setItem'> | undefined {
  try {
    // Reading `sessionStorage` itself throws where storage is blocked.
    return (globalThis as { sessionStorage?: Storage }).sessionStorage;
  } catch {
    return undefined;
  }
}

/** The times (ms since the epoch) of this tab's reloads within the budget's period. */
function recentReloads(storage: Pick<Storage, 'getItem'>, budget: ReloadBudget, now: number): number[] {
  let stored: unknown;
  try {
    stored = JSON.parse(storage.getItem(RELOAD_STORAGE_KEY) ?? '[]');
  } catch {
    stored = [];
  }
  if (!Array.isArray(stored)) return [];
  // A time in the future (the clock moved back) still counts.
  return stored.filter((t): t is number => typeof t === 'number' && now - t < budget.perMs);
}

function reloadAllowed(budget: ReloadBudget): boolean {
  const storage = sessionStore();
  if (storage === undefined || typeof pageLocation()?.reload !== 'function') return false;
  try {
    return recentReloads(storage, budget, Date.now()).length < budget.reloads;
  } catch {
    return false;
  }
}

/**
 * Reloads the page if fewer than `budget.reloads` reloads happened in this tab within
 * `budget.perMs`, recording this one first. Without a working `sessionStorage` the budget
 * cannot be kept across the reload, so it never reloads.
 */
function reloadWithin(budget: ReloadBudget): boolean {
  const storage = sessionStore();
  const location = pageLocation();
  if (storage === undefined || typeof location?.reload !== 'function') return false;
  const now = Date.now();
  try {
    const recent = recentReloads(storage, budget, now);
    if (recent.length >= budget.reloads) return false;
    storage.setItem(RELOAD_STORAGE_KEY, JSON.stringify([...recent, now]));
  } catch {
    return false;
  }
  location.reload();
  return true;
}

function pageLocation(): { reload?: () => void } | undefined {
  return (globalThis as { location?: { reload?: () => void } }).location;
}

function pageDocument(): Document | undefined {
  const document = (globalThis as { document?: Document }).document;
  return typeof document?.addEventListener === 'function' ? document : undefined;
}

/** Follows the user's input from now on; returns the time of the latest (or of the call). */
function watchInput(): () => number {
  let last = Date.now();
  const document = pageDocument();
  const seen = () => {
    last = Date.now();
  };
  for (const type of USER_INPUT) document?.addEventListener(type, seen, { capture: true, passive: true });
  return () => last;
}

/** Calls `reload` once the page is hidden or has had no input for `idleMs` (now, if it is already). */
function reloadWhenIdle(lastInput: () => number, idleMs: number, reload: () => boolean): void {
  const document = pageDocument();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const done = () => {
    clearTimeout(timer);
    document?.removeEventListener('visibilitychange', check);
  };
  function check() {
    const quietFor = Date.now() - lastInput();
    if (document?.visibilityState === 'hidden' || quietFor >= idleMs) {
      done();
      reload();
      return;
    }
    clearTimeout(timer);
    timer = setTimeout(check, idleMs - quietFor);
  }
  document?.addEventListener('visibilitychange', check);
  check();
}

function notify<T>(callback: ((info: T) => void) | undefined, info: T): void {
  if (callback === undefined) return;
  try {
    callback(info);
  } catch (error) {
    // The call itself succeeded; surface the callback's bug without failing it.
    const report = (globalThis as { reportError?: (e: unknown) => void }).reportError;
    if (typeof report === 'function') {
      report(error);
    } else {
      setTimeout(() => {
        throw error;
      });
    }
  }
}
