import { useEffect, useState } from 'react';
import type { RetiredInfo } from '@skewguard/fetch';
import { apiFetch, onRetired } from './api';
import { type Cart, formatMoney, readCart } from './cart';
import { CART_SCHEMA, DEPLOYMENT_ID, POLL_MS } from './config';

interface Poll {
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
  lastError: string | null;
  updatedAt: Date | null;
}

const initial: Poll = {
  cart: null,
  servedBy: null,
  rule: null,
  requests: 0,
  valid: 0,
  validationErrors: 0,
  httpErrors: 0,
  networkErrors: 0,
  lastError: null,
  updatedAt: null,
};

/** Fetches the cart every POLL_MS until this build is retired. */
function useCart(): Poll {
  const [poll, setPoll] = useState(initial);
  useEffect(() => {
    let stopped = false;
    let inFlight = false;
    const tick = async () => {
      if (stopped || inFlight || apiFetch.retired) return;
      inFlight = true;
      const update = (change: (p: Poll) => Partial<Poll>) =>
        !stopped && setPoll((p) => ({ ...p, ...change(p), requests: p.requests + 1, updatedAt: new Date() }));
      try {
        const response = await apiFetch('/v2/cart', { headers: { Accept: 'application/json' }, cache: 'no-store' });
        const servedBy = response.headers.get('X-Deployment-ID');
        const rule = response.headers.get('X-Skewguard-Rule');
        if (response.status === 409 && apiFetch.retired) {
          // The banner takes it from here (onRetired); polling stops.
          update(() => ({ servedBy, rule }));
          return;
        }
        if (!response.ok) {
          update((p) => ({ servedBy, rule, httpErrors: p.httpErrors + 1, lastError: `HTTP ${response.status}` }));
          return;
        }
        let body: unknown;
        try {
          body = await response.json();
        } catch {
          body = undefined;
        }
        const result = body === undefined ? { ok: false as const, error: 'not JSON' } : readCart(CART_SCHEMA, body);
        if (result.ok) {
          update((p) => ({ servedBy, rule, cart: result.cart, valid: p.valid + 1 }));
        } else {
          console.error(`cart validation failed: ${result.error}`);
          update((p) => ({
            servedBy,
            rule,
            validationErrors: p.validationErrors + 1,
            lastError: result.error,
          }));
        }
      } catch (error) {
        update((p) => ({ networkErrors: p.networkErrors + 1, lastError: String(error) }));
      } finally {
        inFlight = false;
      }
    };
    void tick();
    const timer = setInterval(tick, POLL_MS);
    return () => {
      stopped = true;
      clearInterval(timer);
    };
  }, []);
  return poll;
}

function useRetired(): RetiredInfo | undefined {
  const [retired, setRetired] = useState<RetiredInfo | undefined>(apiFetch.retired);
  useEffect(() => onRetired(setRetired), []);
  return retired;
}

export function App() {
  const poll = useCart();
  const retired = useRetired();
  const { cart } = poll;
  return (
    <main>
      {retired && (
        <div className="banner" role="alert" data-testid="banner">
          <div>
            <strong>New version available — reload</strong>
            <p>
              This page was built for deployment <code>{retired.deploymentId}</code>, which has been retired
              {retired.currentDeploymentId && (
                <>
                  ; production now runs <code data-testid="banner-current">{retired.currentDeploymentId}</code>
                </>
              )}
              .
            </p>
          </div>
          <button type="button" data-testid="reload" onClick={() => window.location.reload()}>
            Reload
          </button>
        </div>
      )}
      <header>
        <h1>Checkout</h1>
        <p className="build">
          build <code data-testid="build-id">{DEPLOYMENT_ID ?? 'unpinned'}</code> · cart schema{' '}
          <code data-testid="build-schema">{CART_SCHEMA}</code>
        </p>
      </header>

      <section className="cart">
        <h2>Your cart</h2>
        {cart ? (
          <table>
            <thead>
              <tr>
                <th>SKU</th>
                <th>Qty</th>
                <th>Price</th>
                <th>Subtotal</th>
              </tr>
            </thead>
            <tbody>
              {cart.items.map((item) => (
                <tr key={item.sku}>
                  <td>{item.sku}</td>
                  <td>{item.qty}</td>
                  <td>{formatMoney(item.priceMinor, cart.currency)}</td>
                  <td>{formatMoney(item.priceMinor * item.qty, cart.currency)}</td>
                </tr>
              ))}
            </tbody>
            <tfoot>
              <tr>
                <td colSpan={3}>Total</td>
                <td data-testid="total">{formatMoney(cart.totalMinor, cart.currency)}</td>
              </tr>
            </tfoot>
          </table>
        ) : (
          <p>Loading…</p>
        )}
      </section>

      <section className="status">
        <h2>Connection</h2>
        <dl>
          <dt>served by</dt>
          <dd>
            <code data-testid="served-by">{poll.servedBy ?? '—'}</code>
            {retired && !poll.servedBy && <span> the load balancer: retired answer</span>}
            {poll.rule && <span className="rule"> (listener rule {poll.rule})</span>}
          </dd>
          <dt>requests</dt>
          <dd data-testid="requests">{poll.requests}</dd>
          <dt>valid carts</dt>
          <dd data-testid="valid">{poll.valid}</dd>
          <dt>validation errors</dt>
          <dd data-testid="validation-errors" className={poll.validationErrors ? 'bad' : 'good'}>
            {poll.validationErrors}
          </dd>
          <dt>HTTP errors</dt>
          <dd data-testid="http-errors" className={poll.httpErrors ? 'bad' : 'good'}>
            {poll.httpErrors}
          </dd>
          <dt>network errors</dt>
          <dd data-testid="network-errors" className={poll.networkErrors ? 'bad' : 'good'}>
            {poll.networkErrors}
          </dd>
          <dt>last error</dt>
          <dd data-testid="last-error">{poll.lastError ?? '—'}</dd>
          <dt>updated</dt>
          <dd data-testid="updated">
            {poll.updatedAt ? poll.updatedAt.toISOString().slice(11, 23) : '—'}
            {retired && ' (stopped: this version was retired)'}
          </dd>
        </dl>
      </section>
    </main>
  );
}
