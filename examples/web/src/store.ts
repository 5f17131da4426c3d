import {
  type FetchFunction,
  type PinnedFetch,
  type ReloadStrategy,
  type StaleInfo,
  createPinnedFetch,
} from '@skewguard/fetch';
import { type Cart, type Schema, readCart } from './cart';

/** Everything the page shows, as one immutable snapshot (for `useSyncExternalStore`). */
export interface CartState {
  cart: Cart | null;
  /** `X-Deployment-ID` of the last answer: the backend deployment that served it. */
  servedBy: string | null;
  /** `X-Skewguard-Rule` of the last answer (the local data plane's debug header). */
  rule: string | null;
  requests: number;
  valid: number;
  validationErrors: number;
  httpErrors: number;
  networkErrors: number;
  /** How often `onSkew` reported an answer from another deployment than this build's. */
  skews: number;
  /** Set once this build's backend no longer answers its pin; polling stops then. */
  stale: StaleInfo | null;
  /** The reload budget refused a reload: reloading brought this same version back recently. */
  reloadRefused: boolean;
  lastError: string | null;
  updatedAt: Date | null;
}

export interface CartStore {
  /** The app's one `fetch`, pinned to this build's deployment. */
  readonly apiFetch: PinnedFetch;
  /** Polls the cart while anyone is subscribed. */
  subscribe(onChange: () => void): () => void;
  getSnapshot(): CartState;
  /** The banner's button: reloads the tab, if the reload budget allows it. */
  reload(): void;
}

export interface CartStoreOptions {
  /** This build's deployment ID; `undefined` in an unpinned development build. */
  deploymentId: string | undefined;
  schema: Schema;
  pollMs: number;
  reload: ReloadStrategy;
  /** The `fetch` underneath. Default: the global one. */
  fetch?: FetchFunction;
}

const initial: CartState = {
  cart: null,
  servedBy: null,
  rule: null,
  requests: 0,
  valid: 0,
  validationErrors: 0,
  httpErrors: 0,
  networkErrors: 0,
  skews: 0,
  stale: null,
  reloadRefused: false,
  lastError: null,
  updatedAt: null,
};

/** Fetches the cart every `pollMs` through `@skewguard/fetch` until the tab turns stale. */
export function createCartStore(options: CartStoreOptions): CartStore {
  let state = initial;
  const listeners = new Set<() => void>();
  let timer: ReturnType<typeof setInterval> | undefined;
  let inFlight = false;

  const set = (change: Partial<CartState>) => {
    state = { ...state, ...change };
    for (const listener of listeners) listener();
  };
  const stop = () => {
    clearInterval(timer);
    timer = undefined;
  };

  const apiFetch = createPinnedFetch({
    deploymentId: options.deploymentId,
    reload: options.reload,
    ...(options.fetch && { fetch: options.fetch }),
    onSkew: ({ deploymentId, servedBy }) => {
      console.warn(`skewguard: deployment ${servedBy} answered a request pinned to ${deploymentId}`);
      set({ skews: state.skews + 1 });
    },
    onStale: (stale) => {
      stop();
      set({ stale, reloadRefused: !stale.canReload });
    },
  });

  /** One answer more: `change` plus the request count and time. */
  const answered = (change: Partial<CartState>) =>
    set({ ...change, requests: state.requests + 1, updatedAt: new Date() });

  const tick = async () => {
    if (inFlight || state.stale) return;
    inFlight = true;
    try {
      const response = await apiFetch('/v2/cart', { headers: { Accept: 'application/json' }, cache: 'no-store' });
      const seen = {
        servedBy: response.headers.get('X-Deployment-ID'),
        rule: response.headers.get('X-Skewguard-Rule'),
      };
      if (response.status === 409 && apiFetch.stale?.reason === 'retired') {
        // The retired answer: the banner takes it from here.
        answered(seen);
        return;
      }
      if (!response.ok) {
        answered({ ...seen, httpErrors: state.httpErrors + 1, lastError: `HTTP ${response.status}` });
        return;
      }
      let body: unknown;
      try {
        body = await response.json();
      } catch {
        body = undefined;
      }
      const result = body === undefined ? { ok: false as const, error: 'not JSON' } : readCart(options.schema, body);
      if (result.ok) {
        answered({ ...seen, cart: result.cart, valid: state.valid + 1 });
      } else {
        console.error(`cart validation failed: ${result.error}`);
        answered({ ...seen, validationErrors: state.validationErrors + 1, lastError: result.error });
      }
    } catch (error) {
      answered({ networkErrors: state.networkErrors + 1, lastError: String(error) });
    } finally {
      inFlight = false;
    }
  };

  return {
    apiFetch,
    subscribe(onChange) {
      listeners.add(onChange);
      if (timer === undefined && !state.stale) {
        void tick();
        timer = setInterval(tick, options.pollMs);
      }
      return () => {
        listeners.delete(onChange);
        if (listeners.size === 0) stop();
      };
    },
    getSnapshot: () => state,
    reload() {
      if (!apiFetch.reload()) set({ reloadRefused: true });
    },
  };
}
