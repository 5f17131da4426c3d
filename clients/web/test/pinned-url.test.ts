import { describe, expect, it } from 'vitest';
import { createPinnedFetch } from '../src/index.js';
import { BASE, ID } from './helpers.js';

const withQuery = (options = {}) =>
  createPinnedFetch({ deploymentId: ID, baseUrl: BASE, queryParam: 'dpl', ...options });

describe('pinnedUrl: the query pin for requests that cannot carry a header', () => {
  it('adds queryParam=deploymentId to same-origin URLs, keeping the rest as written', () => {
    const { pinnedUrl } = withQuery();
    expect(pinnedUrl('/v2/events')).toBe(`/v2/events?dpl=${ID}`);
    expect(pinnedUrl('/v2/img/a.png?w=200&fit=a%20b')).toBe(`/v2/img/a.png?w=200&fit=a%20b&dpl=${ID}`);
    expect(pinnedUrl('/v2/x?#top')).toBe(`/v2/x?dpl=${ID}#top`);
    expect(pinnedUrl('/v2/x?a=1&')).toBe(`/v2/x?a=1&dpl=${ID}`);
    expect(pinnedUrl('https://shop.example/v2/feed#latest')).toBe(`https://shop.example/v2/feed?dpl=${ID}#latest`);
    expect(pinnedUrl(new URL('/v2/feed', BASE))).toBe(`https://shop.example/v2/feed?dpl=${ID}`);
  });

  it('pins WebSocket URLs of the same host (ws: for http:, wss: for https:)', () => {
    const { pinnedUrl } = withQuery();
    expect(pinnedUrl('wss://shop.example/v2/live')).toBe(`wss://shop.example/v2/live?dpl=${ID}`);
    expect(pinnedUrl('ws://shop.example/v2/live')).toBe('ws://shop.example/v2/live');
    expect(pinnedUrl('wss://other.example/v2/live')).toBe('wss://other.example/v2/live');
  });

  it('pins the extra origins, and leaves other origins alone', () => {
    const { pinnedUrl } = withQuery({ origins: ['https://api.shop.example'] });
    expect(pinnedUrl('https://api.shop.example/v2/events')).toBe(`https://api.shop.example/v2/events?dpl=${ID}`);
    expect(pinnedUrl('https://cdn.other.example/logo.png')).toBe('https://cdn.other.example/logo.png');
    expect(pinnedUrl('data:image/png;base64,AAAA')).toBe('data:image/png;base64,AAAA');
  });

  it('never replaces the parameter when the URL has it already', () => {
    expect(withQuery().pinnedUrl('/v2/events?x=1&dpl=other')).toBe('/v2/events?x=1&dpl=other');
  });

  it('changes nothing without a queryParam or without a deployment ID', () => {
    expect(createPinnedFetch({ deploymentId: ID, baseUrl: BASE }).pinnedUrl('/v2/events')).toBe('/v2/events');
    expect(withQuery({ deploymentId: undefined }).pinnedUrl('/v2/events')).toBe('/v2/events');
    expect(withQuery().queryParam).toBe('dpl');
  });

  it('pins relative URLs when there is nothing to resolve them against', () => {
    const pinned = createPinnedFetch({ deploymentId: ID, queryParam: 'dpl' });
    expect(pinned.pinnedUrl('/v2/events')).toBe(`/v2/events?dpl=${ID}`);
    expect(pinned.pinnedUrl('https://other.example/v2/events')).toBe('https://other.example/v2/events');
  });

  it('rejects a parameter name the hooks would reject', () => {
    expect(() => withQuery({ queryParam: 'd pl' })).toThrow(/invalid queryParam/);
    expect(() => withQuery({ queryParam: '' })).toThrow(/invalid queryParam/);
  });
});
