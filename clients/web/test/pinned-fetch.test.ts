import { afterEach, describe, expect, it, vi } from 'vitest';
import {
  DEFAULT_HEADER_NAME,
  type FetchFunction,
  type StaleInfo,
  createPinnedFetch,
  readRetiredAnswer,
} from '../src/index.js';
import { BASE, ID, fakeFetch, retired } from './helpers.js';

afterEach(() => {
  vi.unstubAllGlobals();
});

describe('header injection', () => {
  it('adds the deployment ID to relative, same-origin and URL-object requests', async () => {
    const { fetch, sent } = fakeFetch();
    const pinned = createPinnedFetch({ deploymentId: ID, fetch, baseUrl: BASE });
    await pinned('/v2/cart');
    await pinned('https://shop.example/v2/cart?x=1');
    await pinned(new URL('/v2/orders', BASE));
    expect(sent.map((r) => [r.url, r.headers.get('x-deployment-id')])).toEqual([
      ['https://shop.example/v2/cart', ID],
      ['https://shop.example/v2/cart?x=1', ID],
      ['https://shop.example/v2/orders', ID],
    ]);
  });

  it('keeps every other part of init', async () => {
    const { fetch, sent, calls } = fakeFetch();
    const pinned = createPinnedFetch({ deploymentId: ID, fetch, baseUrl: BASE });
    const controller = new AbortController();
    await pinned('/v2/cart', {
      method: 'POST',
      body: '{"sku":"A-1"}',
      credentials: 'include',
      signal: controller.signal,
      headers: { 'Content-Type': 'application/json' },
    });
    const request = sent[0];
    expect(request.method).toBe('POST');
    expect(await request.text()).toBe('{"sku":"A-1"}');
    expect(request.credentials).toBe('include');
    expect(calls[0].init?.signal).toBe(controller.signal);
    expect(request.headers.get('content-type')).toBe('application/json');
    expect(request.headers.get(DEFAULT_HEADER_NAME)).toBe(ID);
  });

  it('merges into Headers, plain-object and pair-list headers without dropping any', async () => {
    const { fetch, sent } = fakeFetch();
    const pinned = createPinnedFetch({ deploymentId: ID, fetch, baseUrl: BASE });
    const headers = new Headers({ Accept: 'application/json', 'X-Trace': 't1' });
    await pinned('/v2/cart', { headers });
    await pinned('/v2/cart', { headers: { Accept: 'text/plain' } });
    await pinned('/v2/cart', { headers: [['Accept', 'text/csv']] });
    expect(sent.map((r) => [r.headers.get('accept'), r.headers.get('x-deployment-id')])).toEqual([
      ['application/json', ID],
      ['text/plain', ID],
      ['text/csv', ID],
    ]);
    expect(sent[0].headers.get('x-trace')).toBe('t1');
    // The caller's Headers object is not modified.
    expect(headers.has('x-deployment-id')).toBe(false);
  });

  it('never replaces a header the caller set, whatever its case', async () => {
    const { fetch, sent, calls } = fakeFetch();
    const pinned = createPinnedFetch({ deploymentId: ID, fetch, baseUrl: BASE });
    const init = { headers: { 'x-deployment-id': 'other' } };
    await pinned('/v2/cart', init);
    await pinned(new Request('https://shop.example/v2/cart', { headers: { 'X-DEPLOYMENT-ID': 'req' } }));
    expect(sent.map((r) => r.headers.get('x-deployment-id'))).toEqual(['other', 'req']);
    expect(calls[0].init).toBe(init);
  });

  it('pins Request inputs, keeping their method, body and headers', async () => {
    const { fetch, sent } = fakeFetch();
    const pinned = createPinnedFetch({ deploymentId: ID, fetch, baseUrl: BASE });
    const request = new Request('https://shop.example/v2/cart', {
      method: 'PUT',
      body: 'qty=3',
      headers: { 'X-Trace': 't2' },
    });
    await pinned(request);
    expect(sent[0].method).toBe('PUT');
    expect(await sent[0].text()).toBe('qty=3');
    expect(sent[0].headers.get('x-trace')).toBe('t2');
    expect(sent[0].headers.get('x-deployment-id')).toBe(ID);
    expect(request.headers.has('x-deployment-id')).toBe(false);
  });

  it('follows fetch: init.headers replace a Request\u2019s headers, and get the pin', async () => {
    const { fetch, sent } = fakeFetch();
    const pinned = createPinnedFetch({ deploymentId: ID, fetch, baseUrl: BASE });
    const request = new Request('https://shop.example/v2/cart', { headers: { 'X-Trace': 't3' } });
    await pinned(request, { headers: { Accept: 'application/json' } });
    expect(sent[0].headers.get('x-trace')).toBeNull();
    expect(sent[0].headers.get('accept')).toBe('application/json');
    expect(sent[0].headers.get('x-deployment-id')).toBe(ID);
  });

  it('uses the configured header name', async () => {
    const { fetch, sent } = fakeFetch();
    const pinned = createPinnedFetch({ deploymentId: ID, fetch, baseUrl: BASE, headerName: 'X-Build' });
    await pinned('/v2/cart');
    expect(sent[0].headers.get('x-build')).toBe(ID);
    expect(sent[0].headers.has('x-deployment-id')).toBe(false);
    expect(pinned.headerName).toBe('X-Build');
    expect(pinned.deploymentId).toBe(ID);
  });
});

describe('which requests are pinned', () => {
  it('leaves third-party requests exactly as given', async () => {
    const { fetch, sent, calls } = fakeFetch();
    const pinned = createPinnedFetch({ deploymentId: ID, fetch, baseUrl: BASE });
    const init = { headers: { Accept: 'application/json' } };
    await pinned('https://cdn.other.example/lib.json', init);
    await pinned('http://shop.example/v2/cart'); // another scheme is another origin
    await pinned('//api.other.example/x');
    await pinned('data:application/json,{}');
    expect(sent.map((r) => r.headers.has('x-deployment-id'))).toEqual([false, false, false, false]);
    expect(calls[0].init).toBe(init);
    expect(calls[1].init).toBeUndefined();
  });

  it('pins the extra origins it is given', async () => {
    const { fetch, sent } = fakeFetch();
    const pinned = createPinnedFetch({
      deploymentId: ID,
      fetch,
      baseUrl: BASE,
      origins: ['https://api.shop.example/'],
    });
    await pinned('https://api.shop.example/v2/cart');
    await pinned('https://cdn.other.example/x');
    expect(sent.map((r) => r.headers.get('x-deployment-id'))).toEqual([ID, null]);
  });

  it('lets shouldPin decide', async () => {
    const { fetch, sent } = fakeFetch();
    const pinned = createPinnedFetch({
      deploymentId: ID,
      fetch,
      baseUrl: BASE,
      shouldPin: (url) => url.pathname.startsWith('/v2/'),
    });
    await pinned('/v2/cart');
    await pinned('/static/app.json');
    await pinned('https://elsewhere.example/v2/cart');
    expect(sent.map((r) => r.headers.get('x-deployment-id'))).toEqual([ID, null, ID]);
  });

  it("takes the page's location as the same origin in a browser", async () => {
    vi.stubGlobal('location', { href: 'https://shop.example/checkout' });
    const { fetch, sent } = fakeFetch();
    const pinned = createPinnedFetch({ deploymentId: ID, fetch });
    await pinned('/v2/cart');
    await pinned('https://other.example/v2/cart');
    expect(sent.map((r) => r.headers.get('x-deployment-id'))).toEqual([ID, null]);
  });

  it('pins relative URLs when there is nothing to resolve them against', async () => {
    const { fetch, calls } = fakeFetch();
    const pinned = createPinnedFetch({ deploymentId: ID, fetch });
    await pinned('/v2/cart');
    await pinned('https://other.example/v2/cart');
    expect(new Headers(calls[0].init?.headers).get('x-deployment-id')).toBe(ID);
    expect(calls[1].init).toBeUndefined();
  });

  it('sends requests unchanged when the build has no deployment ID', async () => {
    for (const deploymentId of [undefined, null, '']) {
      const { fetch, calls } = fakeFetch(() => retired('b'));
      const onStale = vi.fn();
      const pinned = createPinnedFetch({ deploymentId, fetch, baseUrl: BASE, onStale });
      const init = { method: 'GET' };
      await pinned('/v2/cart', init);
      expect(calls[0].init).toBe(init);
      expect(pinned.deploymentId).toBeUndefined();
      expect(onStale).not.toHaveBeenCalled();
    }
  });

  it('rejects invalid deployment IDs and header names at creation', () => {
    expect(() => createPinnedFetch({ deploymentId: 'a b' })).toThrow(/invalid deployment ID/);
    expect(() => createPinnedFetch({ deploymentId: 'abc*' })).toThrow(/invalid deployment ID/);
    expect(() => createPinnedFetch({ deploymentId: 'x'.repeat(129) })).toThrow(/invalid deployment ID/);
    expect(() => createPinnedFetch({ deploymentId: ID, headerName: 'X Deployment' })).toThrow(/invalid header name/);
    expect(createPinnedFetch({ deploymentId: 'v1.2_3-abc' }).deploymentId).toBe('v1.2_3-abc');
  });
});

describe('the retired answer', () => {
  it('makes the tab stale once, naming the current deployment, and leaves the body to the caller', async () => {
    const { fetch } = fakeFetch(() => retired('b2c3d4e'));
    const seen: StaleInfo[] = [];
    const pinned = createPinnedFetch({
      deploymentId: ID,
      fetch,
      baseUrl: BASE,
      onStale: (info) => seen.push(info),
    });
    expect(pinned.stale).toBeUndefined();
    const first = await pinned('/v2/cart');
    expect(first.status).toBe(409);
    expect(first.bodyUsed).toBe(false);
    expect(await first.json()).toEqual({ error: 'deployment_retired', currentDeploymentId: 'b2c3d4e' });
    const second = await pinned('/v2/cart');
    expect(await second.json()).toEqual({ error: 'deployment_retired', currentDeploymentId: 'b2c3d4e' });
    expect(seen).toHaveLength(1);
    expect(seen[0]).toMatchObject({ reason: 'retired', deploymentId: ID, currentDeploymentId: 'b2c3d4e' });
    expect(seen[0].response).toBe(first);
    expect(pinned.stale).toBe(seen[0]);
    expect(pinned.skew).toBeUndefined();
  });

  it('reports it once when concurrent calls are all answered retired', async () => {
    const { fetch } = fakeFetch(() => retired('b2c3d4e'));
    const onStale = vi.fn();
    const pinned = createPinnedFetch({ deploymentId: ID, fetch, baseUrl: BASE, onStale });
    await Promise.all([pinned('/v2/cart'), pinned('/v2/cart'), pinned('/v2/orders')]);
    expect(onStale).toHaveBeenCalledTimes(1);
  });

  it('accepts an answer without currentDeploymentId', async () => {
    const { fetch } = fakeFetch(() => retired());
    const onStale = vi.fn();
    const pinned = createPinnedFetch({ deploymentId: ID, fetch, baseUrl: BASE, onStale });
    await pinned('/v2/cart');
    expect(onStale).toHaveBeenCalledTimes(1);
    expect(onStale.mock.calls[0][0]).not.toHaveProperty('currentDeploymentId');
  });

  it('leaves other 409s and other answers alone', async () => {
    const answers = [
      () => new Response('{"error":"out_of_stock"}', { status: 409, headers: { 'Content-Type': 'application/json' } }),
      () => new Response('{"error":"deployment_retired"}', { status: 409, headers: { 'Content-Type': 'text/plain' } }),
      () => new Response('not json', { status: 409, headers: { 'Content-Type': 'application/json' } }),
      () => new Response('["deployment_retired"]', { status: 409, headers: { 'Content-Type': 'application/json' } }),
      () =>
        new Response('{"error":"deployment_retired"}', {
          status: 410,
          headers: { 'Content-Type': 'application/json' },
        }),
      () =>
        new Response('{"error":"deployment_retired"}', {
          status: 200,
          headers: { 'Content-Type': 'application/json' },
        }),
    ];
    for (const answer of answers) {
      const { fetch } = fakeFetch(answer);
      const onStale = vi.fn();
      const pinned = createPinnedFetch({ deploymentId: ID, fetch, baseUrl: BASE, onStale });
      const response = await pinned('/v2/cart');
      expect(response.bodyUsed).toBe(false);
      expect(await response.text()).toBe(await answer().text());
      expect(onStale).not.toHaveBeenCalled();
      expect(pinned.stale).toBeUndefined();
    }
  });

  it('ignores a retired-looking answer to a request it did not pin, or that carried another pin', async () => {
    const { fetch } = fakeFetch(() => retired('b'));
    const onStale = vi.fn();
    const pinned = createPinnedFetch({ deploymentId: ID, fetch, baseUrl: BASE, onStale });
    await pinned('https://third-party.example/api');
    await pinned('/v2/cart', { headers: { 'X-Deployment-ID': 'other' } });
    expect(onStale).not.toHaveBeenCalled();
    // A header the caller set to this build's own ID (in any case) is this build's pin.
    await pinned('/v2/cart', { headers: { 'X-Deployment-ID': ID.toUpperCase() } });
    expect(onStale).toHaveBeenCalledTimes(1);
  });

  it('does not fail the call when onStale throws', async () => {
    const reported: unknown[] = [];
    vi.stubGlobal('reportError', (e: unknown) => reported.push(e));
    const { fetch } = fakeFetch(() => retired('b'));
    const pinned = createPinnedFetch({
      deploymentId: ID,
      fetch,
      baseUrl: BASE,
      onStale: () => {
        throw new Error('bug in the app');
      },
    });
    const response = await pinned('/v2/cart');
    expect(response.status).toBe(409);
    expect(reported).toEqual([new Error('bug in the app')]);
  });

  it('readRetiredAnswer reads a clone', async () => {
    const response = retired('c3d4e5f');
    expect(await readRetiredAnswer(response)).toEqual({ currentDeploymentId: 'c3d4e5f' });
    expect(response.bodyUsed).toBe(false);
    const problem = new Response('{"error":"deployment_retired"}', {
      status: 409,
      headers: { 'Content-Type': 'application/problem+json; charset=utf-8' },
    });
    expect(await readRetiredAnswer(problem)).toEqual({});
    expect(await readRetiredAnswer(new Response(null, { status: 204 }))).toBeUndefined();
  });
});

describe('the wrapped fetch', () => {
  it('is globalThis.fetch by default, looked up at each call', async () => {
    const pinned = createPinnedFetch({ deploymentId: ID, baseUrl: BASE });
    const first = fakeFetch();
    vi.stubGlobal('fetch', first.fetch);
    await pinned('/v2/cart');
    const second = fakeFetch();
    vi.stubGlobal('fetch', second.fetch);
    await pinned('/v2/cart');
    expect([first.sent.length, second.sent.length]).toEqual([1, 1]);
    expect(second.sent[0].headers.get('x-deployment-id')).toBe(ID);
  });

  it('calls a passed fetch on globalThis (window.fetch passed as a value)', async () => {
    let self: unknown;
    const fetch = function (this: unknown) {
      self = this;
      return Promise.resolve(new Response('ok'));
    } as unknown as FetchFunction;
    await createPinnedFetch({ deploymentId: ID, fetch, baseUrl: BASE })('/v2/cart');
    expect(self).toBe(globalThis);
  });

  it('passes network errors through', async () => {
    const fetch: FetchFunction = () => Promise.reject(new TypeError('Failed to fetch'));
    const pinned = createPinnedFetch({ deploymentId: ID, fetch, baseUrl: BASE });
    await expect(pinned('/v2/cart')).rejects.toThrow('Failed to fetch');
  });
});
