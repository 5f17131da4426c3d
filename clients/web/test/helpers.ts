import type { FetchFunction } from '../src/index.js';

export const BASE = 'https://shop.example/app/cart';
export const ID = 'a1b2c3d';

/** A fake `fetch` that records the request real fetch would send, and answers `answer`. */
export function fakeFetch(answer: () => Response = () => new Response('{}', { status: 200 })) {
  const sent: Request[] = [];
  const calls: Array<{ input: RequestInfo | URL; init?: RequestInit }> = [];
  const fetch: FetchFunction = async (input, init) => {
    calls.push({ input, init });
    // What the browser would send: fetch builds exactly this Request from its arguments.
    const resolved = typeof input === 'string' ? new URL(input, BASE) : input;
    sent.push(new Request(resolved, init));
    return answer();
  };
  return { fetch, sent, calls };
}

export function retired(current?: string): Response {
  const body: Record<string, string> = { error: 'deployment_retired' };
  if (current !== undefined) body.currentDeploymentId = current;
  return new Response(JSON.stringify(body), {
    status: 409,
    headers: { 'Content-Type': 'application/json' },
  });
}
