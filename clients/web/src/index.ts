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
 * When the skew window of a deployment ends and the service uses `afterWindow: retired`, the
 * load balancer answers pinned calls with `409` and
 * `{"error":"deployment_retired","currentDeploymentId":"..."}`; the wrapper recognises that
 * answer (reading a clone, so the caller's response is untouched) and calls `onRetired` once, so
 * the app can offer a reload.
 *
 * No runtime dependencies; works wherever `fetch`, `Headers`, `Response` and `URL` exist.
 */

/** The header skewguard's pin rules match by default. */
export const DEFAULT_HEADER_NAME = 'X-Deployment-ID';

/** The HTTP status of skewguard's "this version was retired" answer. */
export const RETIRED_STATUS = 409;

/** The `error` field of skewguard's "this version was retired" answer. */
export const RETIRED_ERROR = 'deployment_retired';

/** What skewguard's "this version was retired" answer says. */
export interface RetiredAnswer {
  /** The deployment ID production runs now, when the answer names it. */
  currentDeploymentId?: string;
}

/** Passed to `onRetired`. */
export interface RetiredInfo extends RetiredAnswer {
  /** The deployment ID this frontend was built with: the one that was retired. */
  deploymentId: string;
  /**
   * The first retired answer. Its body is unread (the wrapper read a clone); the same object
   * is also returned to whoever made the call.
   */
  response: Response;
}

/** The shape of `fetch`. */
export type FetchFunction = (input: RequestInfo | URL, init?: RequestInit) => Promise<Response>;

export interface PinnedFetchOptions {
  /**
   * The deployment ID of this build, usually injected at build time
   * (`import.meta.env.VITE_DEPLOYMENT_ID`). Letters, digits, `.`, `_` and `-`, at most 128
   * characters. `undefined`, `null` or `''` turns pinning off (a local development build):
   * requests go out unchanged.
   */
  deploymentId: string | null | undefined;
  /** The request header that carries the pin. Default `X-Deployment-ID`. */
  headerName?: string;
  /**
   * Called once per wrapper, with the first retired answer: this build's backend is gone. A
   * retired deployment never comes back, so later retired answers only reach their callers.
   * An exception thrown here is reported asynchronously and never fails the call.
   */
  onRetired?: (info: RetiredInfo) => void;
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
   * the request URL resolved against `baseUrl`. Relative URLs that cannot be resolved (no
   * `baseUrl`, no `location`) are always pinned: they can only go to the page's own origin.
   */
  shouldPin?: (url: URL) => boolean;
}

/** A `fetch`-compatible function that pins requests, plus what it knows. */
export interface PinnedFetch extends FetchFunction {
  /** The deployment ID it sends, or `undefined` when pinning is off. */
  readonly deploymentId: string | undefined;
  /** The header it sends it in. */
  readonly headerName: string;
  /** Set from the first retired answer on; `undefined` until then. */
  readonly retired: RetiredInfo | undefined;
}

const DEPLOYMENT_ID = /^[A-Za-z0-9._-]{1,128}$/;
const HEADER_TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const ABSOLUTE_OR_PROTOCOL_RELATIVE = /^([a-z][a-z0-9+.-]*:|\/\/)/i;

/**
 * Wraps `fetch` so that requests to the app's own origin (and `origins`) carry the build's
 * deployment ID in `headerName`, and reports skewguard's retired answer through `onRetired`.
 *
 * A header the caller set (in `init.headers`, or on a `Request` when `init` has no headers)
 * is never replaced. Requests that are not pinned go out exactly as given.
 */
export function createPinnedFetch(options: PinnedFetchOptions): PinnedFetch {
  const headerName = options.headerName ?? DEFAULT_HEADER_NAME;
  if (!HEADER_TOKEN.test(headerName)) {
    throw new TypeError(`@skewguard/fetch: invalid header name ${JSON.stringify(headerName)}`);
  }
  const deploymentId = options.deploymentId || undefined;
  if (deploymentId !== undefined && !DEPLOYMENT_ID.test(deploymentId)) {
    throw new TypeError(
      `@skewguard/fetch: invalid deployment ID ${JSON.stringify(deploymentId)} ` +
        '(letters, digits, ".", "_" and "-", at most 128 characters)',
    );
  }
  const base = options.baseUrl?.toString() ?? currentLocation();
  const shouldPin = options.shouldPin ?? sameOrigin(base, options.origins ?? []);
  const call = fetchFunction(options.fetch);
  let retired: RetiredInfo | undefined;

  const pinnedFetch = async (input: RequestInfo | URL, init?: RequestInit): Promise<Response> => {
    if (deploymentId === undefined || !pins(requestUrl(input), base, shouldPin)) {
      return call(input, init);
    }
    const pinnedInit = withHeader(input, init, headerName, deploymentId);
    const response = await (pinnedInit === undefined ? call(input, init) : call(input, pinnedInit));
    if (retired === undefined) {
      const answer = await readRetiredAnswer(response);
      // Another call may have seen a retired answer while this one read its body.
      if (answer !== undefined && retired === undefined) {
        retired = { ...answer, deploymentId, response };
        notify(options.onRetired, retired);
      }
    }
    return response;
  };

  Object.defineProperties(pinnedFetch, {
    deploymentId: { value: deploymentId, enumerable: true },
    headerName: { value: headerName, enumerable: true },
    retired: { get: () => retired, enumerable: true },
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
 * The `init` to send instead of the caller's, or `undefined` when the caller already set the
 * header. Fetch's own rule decides where the request's headers come from: `init.headers` when
 * given (it replaces a `Request`'s headers), else the `Request`'s.
 */
function withHeader(
  input: RequestInfo | URL,
  init: RequestInit | undefined,
  name: string,
  value: string,
): RequestInit | undefined {
  let headers: Headers;
  if (init?.headers !== undefined) {
    headers = new Headers(init.headers);
  } else if (isRequest(input)) {
    headers = new Headers(input.headers);
  } else {
    headers = new Headers();
  }
  if (headers.has(name)) return undefined;
  headers.set(name, value);
  return { ...init, headers };
}

function notify(onRetired: ((info: RetiredInfo) => void) | undefined, info: RetiredInfo): void {
  if (onRetired === undefined) return;
  try {
    onRetired(info);
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
