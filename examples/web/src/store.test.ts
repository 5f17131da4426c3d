import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { FetchFunction, ReloadStrategy } from '@skewguard/fetch';
import { type CartState, createCartStore } from './store';

const A = 'a1b2c3d';
const B = 'b2c3d4e';
const cartV1 = { items: [{ sku: 'A-1', qty: 2, price_cents: 1250 }], total_cents: 2500, currency: 'EUR' };
const cartV2 = { items: [{ sku: 'A-1', qty: 2, price_minor_units: 1250 }], total_minor_units: 2500, currency: 'EUR' };

/** The backend deployment `id` answering with `cart`. */
const backend = (id: string, cart: unknown) => () =>
  new Response(JSON.stringify(cart), {
    headers: { 'Content-Type': 'application/json', 'X-Deployment-ID': id },
  });
const retiredAnswer = () =>
  new Response(JSON.stringify({ error: 'deployment_retired', currentDeploymentId: B }), {
    status: 409,
    headers: { 'Content-Type': 'application/json' },
  });

/** A store for build A (cart schema v1) whose calls `answer` answers, with a subscriber. */
function start(answer: () => Response, reload: ReloadStrategy = 'prompt') {
  const requests: Request[] = [];
  const fetch: FetchFunction = async (input, init) => {
    requests.push(new Request(new URL(String(input), 'https://shop.example'), init));
    return answer();
  };
  const store = createCartStore({ deploymentId: A, schema: 'v1', pollMs: 500, reload, fetch });
  const snapshots: CartState[] = [];
  const unsubscribe = store.subscribe(() => snapshots.push(store.getSnapshot()));
  return { store, requests, snapshots, unsubscribe };
}

beforeEach(() => {
  vi.useFakeTimers();
  vi.spyOn(console, 'warn').mockImplementation(() => {});
  vi.spyOn(console, 'error').mockImplementation(() => {});
});

afterEach(() => {
  vi.useRealTimers();
  vi.restoreAllMocks();
  vi.unstubAllGlobals();
});

describe('the cart store', () => {
  it('polls, pinned, while subscribed, and shows the cart and who served it', async () => {
    const { store, requests, unsubscribe } = start(backend(A, cartV1));
    await vi.advanceTimersByTimeAsync(1_000);
    expect(requests).toHaveLength(3);
    expect(requests.every((r) => r.headers.get('X-Deployment-ID') === A)).toBe(true);
    expect(store.getSnapshot()).toMatchObject({
      servedBy: A,
      requests: 3,
      valid: 3,
      validationErrors: 0,
      skews: 0,
      stale: null,
      cart: { totalMinor: 2500, currency: 'EUR' },
    });
    unsubscribe();
    await vi.advanceTimersByTimeAsync(5_000);
    expect(requests).toHaveLength(3);
  });

  it('makes a fall-through visible: one skew reported, its broken cart counted, the banner, polling stops', async () => {
    let answer = backend(A, cartV1);
    const { store, requests } = start(() => answer());
    await vi.advanceTimersByTimeAsync(500);
    answer = backend(B, cartV2);
    await vi.advanceTimersByTimeAsync(5_000);
    const state = store.getSnapshot();
    expect(state).toMatchObject({ servedBy: B, valid: 2, validationErrors: 1, skews: 1 });
    expect(state.stale).toMatchObject({ reason: 'skew', deploymentId: A, currentDeploymentId: B });
    expect(requests).toHaveLength(3);
    expect(console.warn).toHaveBeenCalledWith(`skewguard: deployment ${B} answered a request pinned to ${A}`);
  });

  it('takes the retired answer for the banner, not for an error, and stops polling', async () => {
    let answer = backend(A, cartV1);
    const { store, requests } = start(() => answer());
    answer = retiredAnswer;
    await vi.advanceTimersByTimeAsync(5_000);
    const state = store.getSnapshot();
    expect(state).toMatchObject({ valid: 1, httpErrors: 0, validationErrors: 0, skews: 0 });
    expect(state.stale).toMatchObject({ reason: 'retired', currentDeploymentId: B });
    expect(requests).toHaveLength(2);
  });

  it('reloads on the first click, and says so when the reload budget refuses the next', async () => {
    const reload = vi.fn();
    const stored = new Map<string, string>();
    vi.stubGlobal('location', { href: 'https://shop.example/', reload });
    vi.stubGlobal('sessionStorage', {
      getItem: (key: string) => stored.get(key) ?? null,
      setItem: (key: string, value: string) => stored.set(key, value),
    });
    const first = start(retiredAnswer);
    await vi.advanceTimersByTimeAsync(0);
    expect(first.store.getSnapshot().reloadRefused).toBe(false);
    first.store.reload();
    expect(reload).toHaveBeenCalledTimes(1);
    // The reloaded page gets the same version back, and is not reloaded again by the helper.
    const second = start(retiredAnswer, 'immediate');
    await vi.advanceTimersByTimeAsync(0);
    expect(second.store.getSnapshot().reloadRefused).toBe(true);
    second.store.reload();
    expect(reload).toHaveBeenCalledTimes(1);
  });
});
