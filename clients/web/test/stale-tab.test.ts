import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  type FetchFunction,
  type PinnedFetchOptions,
  RELOAD_STORAGE_KEY,
  type SkewInfo,
  type StaleInfo,
  createPinnedFetch,
} from '../src/index.js';
import { BASE, ID, fakeFetch, retired } from './helpers.js';

/** An answer from the backend deployment `servedBy`, as the example backend names itself. */
function servedBy(deploymentId: string, body = '{"items":[]}'): Response {
  return new Response(body, {
    status: 200,
    headers: { 'Content-Type': 'application/json', 'X-Deployment-ID': deploymentId },
  });
}

/**
 * One browser tab, as far as the wrapper sees it: its location (whose `reload` is recorded),
 * its `sessionStorage` (which survives reloads) and its document (visibility, user input).
 * A reload of the page is a new wrapper created in the same tab.
 */
function fakeTab() {
  const stored = new Map<string, string>();
  const sessionStorage = {
    getItem: (key: string) => stored.get(key) ?? null,
    setItem: (key: string, value: string) => void stored.set(key, String(value)),
  };
  const location = { href: BASE, reload: vi.fn() };
  const document = Object.assign(new EventTarget(), { visibilityState: 'visible' as DocumentVisibilityState });
  vi.stubGlobal('location', location);
  vi.stubGlobal('sessionStorage', sessionStorage);
  vi.stubGlobal('document', document);
  return {
    location,
    stored,
    /** The page as loaded (again) in this tab: a fresh wrapper. */
    load: (options: Partial<PinnedFetchOptions> & { fetch: FetchFunction }) =>
      createPinnedFetch({ deploymentId: ID, ...options }),
    hide() {
      document.visibilityState = 'hidden';
      document.dispatchEvent(new Event('visibilitychange'));
    },
    input(type = 'pointerdown') {
      document.dispatchEvent(new Event(type));
    },
  };
}

beforeEach(() => {
  vi.useFakeTimers({ now: new Date('2025-06-01T12:00:00Z') });
});

afterEach(() => {
  vi.useRealTimers();
  vi.unstubAllGlobals();
});

describe('the served-by check', () => {
  it('reports the first answer another deployment served, once, and makes the tab stale', async () => {
    let next = 'b2c3d4e';
    const { fetch } = fakeFetch(() => servedBy(next));
    const skews: SkewInfo[] = [];
    const stale: StaleInfo[] = [];
    const pinned = createPinnedFetch({
      deploymentId: ID,
      fetch,
      baseUrl: BASE,
      onSkew: (info) => skews.push(info),
      onStale: (info) => stale.push(info),
    });
    const first = await pinned('/v2/cart');
    next = 'c3d4e5f';
    await pinned('/v2/cart');
    // The caller gets the answer untouched: the app still sees (and may count) what broke.
    expect(first.bodyUsed).toBe(false);
    expect(await first.json()).toEqual({ items: [] });
    expect(skews).toEqual([{ deploymentId: ID, servedBy: 'b2c3d4e', response: first }]);
    expect(pinned.skew).toBe(skews[0]);
    expect(stale).toHaveLength(1);
    expect(stale[0]).toMatchObject({ reason: 'skew', deploymentId: ID, currentDeploymentId: 'b2c3d4e' });
    expect(pinned.stale).toBe(stale[0]);
  });

  it('is quiet while its own deployment answers (in any case) or the answer names none', async () => {
    const answers = [servedBy(ID), servedBy(ID.toUpperCase()), servedBy(` ${ID} `), new Response('{}')];
    const { fetch } = fakeFetch(() => answers.shift()!);
    const onSkew = vi.fn();
    const onStale = vi.fn();
    const pinned = createPinnedFetch({ deploymentId: ID, fetch, baseUrl: BASE, onSkew, onStale });
    for (let i = 0; i < 4; i++) await pinned('/v2/cart');
    expect(onSkew).not.toHaveBeenCalled();
    expect(onStale).not.toHaveBeenCalled();
  });

  it('does not judge answers to requests that did not carry its pin', async () => {
    const { fetch } = fakeFetch(() => servedBy('b2c3d4e'));
    const onSkew = vi.fn();
    const pinned = createPinnedFetch({ deploymentId: ID, fetch, baseUrl: BASE, onSkew });
    await pinned('https://third-party.example/api');
    await pinned('/v2/cart', { headers: { 'X-Deployment-ID': 'b2c3d4e' } });
    const unpinned = createPinnedFetch({ deploymentId: '', fetch, baseUrl: BASE, onSkew });
    await unpinned('/v2/cart');
    expect(onSkew).not.toHaveBeenCalled();
  });

  it('reads the header servedByHeader names', async () => {
    const { fetch } = fakeFetch(
      () => new Response('{}', { headers: { 'X-Served-By': 'b2c3d4e', 'X-Deployment-ID': ID } }),
    );
    const onSkew = vi.fn();
    const pinned = createPinnedFetch({ deploymentId: ID, fetch, baseUrl: BASE, onSkew, servedByHeader: 'X-Served-By' });
    await pinned('/v2/cart');
    expect(onSkew.mock.calls.map(([info]) => info.servedBy)).toEqual(['b2c3d4e']);
  });

  it('still reports skew once the tab is stale from a retired answer, which stays the reason', async () => {
    const answers = [retired('b2c3d4e'), servedBy('b2c3d4e')];
    const { fetch } = fakeFetch(() => answers.shift()!);
    const onSkew = vi.fn();
    const onStale = vi.fn();
    const pinned = createPinnedFetch({ deploymentId: ID, fetch, baseUrl: BASE, onSkew, onStale });
    await pinned('/v2/cart');
    await pinned('/v2/cart');
    expect(onSkew).toHaveBeenCalledTimes(1);
    expect(onStale).toHaveBeenCalledTimes(1);
    expect(pinned.stale?.reason).toBe('retired');
  });

  it('does not fail the call when onSkew throws', async () => {
    const reported: unknown[] = [];
    vi.stubGlobal('reportError', (e: unknown) => reported.push(e));
    const { fetch } = fakeFetch(() => servedBy('b2c3d4e'));
    const onStale = vi.fn();
    const pinned = createPinnedFetch({
      deploymentId: ID,
      fetch,
      baseUrl: BASE,
      onStale,
      onSkew: () => {
        throw new Error('bug in the app');
      },
    });
    expect((await pinned('/v2/cart')).status).toBe(200);
    expect(reported).toEqual([new Error('bug in the app')]);
    expect(onStale).toHaveBeenCalledTimes(1);
  });
});

describe('reload strategies', () => {
  it('prompt (the default) leaves the reload to the app, within the budget', async () => {
    const tab = fakeTab();
    const onStale = vi.fn();
    const pinned = tab.load({ fetch: fakeFetch(() => retired('b2c3d4e')).fetch, onStale });
    await pinned('/v2/cart');
    expect(onStale.mock.calls[0][0]).toMatchObject({ reason: 'retired', canReload: true });
    expect(tab.location.reload).not.toHaveBeenCalled();
    expect(pinned.reload()).toBe(true);
    // A second click (or any other ask) within the budget's period does not reload again.
    expect(pinned.reload()).toBe(false);
    expect(tab.location.reload).toHaveBeenCalledTimes(1);
  });

  it('immediate reloads at once, after telling the app', async () => {
    const tab = fakeTab();
    const events: string[] = [];
    tab.location.reload.mockImplementation(() => events.push('reload'));
    const pinned = tab.load({
      fetch: fakeFetch(() => servedBy('b2c3d4e')).fetch,
      reload: 'immediate',
      onSkew: () => events.push('skew'),
      onStale: (info) => events.push(`stale ${info.reason}`),
    });
    await pinned('/v2/cart');
    expect(events).toEqual(['skew', 'stale skew', 'reload']);
  });

  it('idle waits while the user is active, and reloads once they have stopped for idleMs', async () => {
    const tab = fakeTab();
    const pinned = tab.load({ fetch: fakeFetch(() => retired('b2c3d4e')).fetch, reload: 'idle', idleMs: 30_000 });
    await vi.advanceTimersByTimeAsync(20_000);
    tab.input('keydown');
    await pinned('/v2/cart');
    expect(pinned.stale).toBeDefined();
    await vi.advanceTimersByTimeAsync(25_000);
    tab.input('pointermove');
    await vi.advanceTimersByTimeAsync(29_000);
    expect(tab.location.reload).not.toHaveBeenCalled();
    await vi.advanceTimersByTimeAsync(1_000);
    expect(tab.location.reload).toHaveBeenCalledTimes(1);
    await vi.advanceTimersByTimeAsync(120_000);
    expect(tab.location.reload).toHaveBeenCalledTimes(1);
  });

  it('idle reloads at once when the tab has been idle long enough already', async () => {
    const tab = fakeTab();
    const pinned = tab.load({ fetch: fakeFetch(() => retired('b2c3d4e')).fetch, reload: 'idle' });
    await vi.advanceTimersByTimeAsync(60_000);
    await pinned('/v2/cart');
    expect(tab.location.reload).toHaveBeenCalledTimes(1);
  });

  it('idle reloads as soon as the tab is hidden', async () => {
    const tab = fakeTab();
    const pinned = tab.load({ fetch: fakeFetch(() => retired('b2c3d4e')).fetch, reload: 'idle' });
    tab.input();
    await pinned('/v2/cart');
    await vi.advanceTimersByTimeAsync(5_000);
    expect(tab.location.reload).not.toHaveBeenCalled();
    tab.hide();
    expect(tab.location.reload).toHaveBeenCalledTimes(1);
    await vi.advanceTimersByTimeAsync(120_000);
    expect(tab.location.reload).toHaveBeenCalledTimes(1);
  });

  it('rejects an unknown strategy and a meaningless budget', () => {
    const options = { deploymentId: ID };
    expect(() => createPinnedFetch({ ...options, reload: 'sometimes' as never })).toThrow(/reload must be one of/);
    expect(() => createPinnedFetch({ ...options, reloadBudget: { reloads: 1.5, perMs: 1 } })).toThrow(/reloadBudget/);
    expect(() => createPinnedFetch({ ...options, reloadBudget: { reloads: 1, perMs: 0 } })).toThrow(/reloadBudget/);
  });
});

describe('the reload budget', () => {
  it('a version that is gone for good reloads the tab once, never in a loop', async () => {
    const tab = fakeTab();
    const canReload: boolean[] = [];
    // Every load of the page gets the retired answer: a reload brings back the same version.
    for (let load = 0; load < 5; load++) {
      const pinned = tab.load({
        fetch: fakeFetch(() => retired()).fetch,
        reload: 'immediate',
        onStale: (info) => canReload.push(info.canReload),
      });
      await pinned('/v2/cart');
      expect(pinned.reload()).toBe(false); // nor when the app asks
      await vi.advanceTimersByTimeAsync(60_000);
    }
    expect(tab.location.reload).toHaveBeenCalledTimes(1);
    expect(canReload).toEqual([true, false, false, false, false]);
  });

  it('allows a reload again once the period has passed, and is kept per tab across wrappers', async () => {
    const tab = fakeTab();
    const options = { fetch: fakeFetch(() => servedBy('b2c3d4e')).fetch, reloadBudget: { reloads: 2, perMs: 60_000 } };
    const first = tab.load(options);
    const second = tab.load(options);
    expect([first.reload(), second.reload(), first.reload()]).toEqual([true, true, false]);
    await vi.advanceTimersByTimeAsync(59_999);
    expect(second.reload()).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    expect([second.reload(), first.reload(), second.reload()]).toEqual([true, true, false]);
    expect(tab.location.reload).toHaveBeenCalledTimes(4);
    expect(JSON.parse(tab.stored.get(RELOAD_STORAGE_KEY)!)).toHaveLength(2);
  });

  it('reloads: 0 never reloads', async () => {
    const tab = fakeTab();
    const onStale = vi.fn();
    const pinned = tab.load({
      fetch: fakeFetch(() => retired()).fetch,
      reload: 'immediate',
      reloadBudget: { reloads: 0, perMs: 1 },
      onStale,
    });
    await pinned('/v2/cart');
    expect(pinned.reload()).toBe(false);
    expect(tab.location.reload).not.toHaveBeenCalled();
    expect(onStale.mock.calls[0][0].canReload).toBe(false);
  });

  it('never reloads where sessionStorage cannot keep the budget', async () => {
    const tab = fakeTab();
    vi.stubGlobal('sessionStorage', undefined);
    expect(tab.load({ fetch: fakeFetch().fetch }).reload()).toBe(false);
    vi.stubGlobal('sessionStorage', {
      getItem: () => null,
      setItem: () => {
        throw new DOMException('quota', 'QuotaExceededError');
      },
    });
    expect(tab.load({ fetch: fakeFetch().fetch }).reload()).toBe(false);
    Object.defineProperty(globalThis, 'sessionStorage', {
      configurable: true,
      get: () => {
        throw new DOMException('blocked', 'SecurityError');
      },
    });
    try {
      expect(tab.load({ fetch: fakeFetch().fetch }).reload()).toBe(false);
    } finally {
      delete (globalThis as { sessionStorage?: unknown }).sessionStorage;
    }
    expect(tab.location.reload).not.toHaveBeenCalled();
  });

  it('treats an unreadable record as no reloads, and replaces it', async () => {
    const tab = fakeTab();
    tab.stored.set(RELOAD_STORAGE_KEY, 'not json');
    const pinned = tab.load({ fetch: fakeFetch().fetch });
    expect(pinned.reload()).toBe(true);
    expect(pinned.reload()).toBe(false);
    expect(JSON.parse(tab.stored.get(RELOAD_STORAGE_KEY)!)).toEqual([Date.now()]);
  });
});
