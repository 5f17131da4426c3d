import { useSyncExternalStore } from 'react';
import type { StaleInfo } from '@skewguard/fetch';
import { cartStore } from './api';
import { formatMoney } from './cart';
import { CART_SCHEMA, DEPLOYMENT_ID, RELOAD_STRATEGY } from './config';

function StaleBanner({ stale, reloadRefused }: { stale: StaleInfo; reloadRefused: boolean }) {
  const current = stale.currentDeploymentId && <code data-testid="banner-current">{stale.currentDeploymentId}</code>;
  return (
    <div className="banner" role="alert" data-testid="banner">
      <div>
        <strong>New version available — reload</strong>
        <p>
          This page was built for deployment <code>{stale.deploymentId}</code>
          {stale.reason === 'retired' ? (
            <>, which has been retired{current && <>; production now runs {current}</>}.</>
          ) : (
            <>, which no longer runs: deployment {current} answered instead.</>
          )}
        </p>
        {reloadRefused && (
          <p data-testid="reload-refused">
            Reloading a moment ago brought back this same version, so the page will not reload again for now. Try again
            in a few minutes.
          </p>
        )}
      </div>
      <button type="button" data-testid="reload" disabled={reloadRefused} onClick={cartStore.reload}>
        Reload
      </button>
    </div>
  );
}

export function App() {
  const poll = useSyncExternalStore(cartStore.subscribe, cartStore.getSnapshot);
  const { cart, stale } = poll;
  return (
    <main>
      {stale && <StaleBanner stale={stale} reloadRefused={poll.reloadRefused} />}
      <header>
        <h1>Checkout</h1>
        <p className="build">
          build <code data-testid="build-id">{DEPLOYMENT_ID ?? 'unpinned'}</code> · cart schema{' '}
          <code data-testid="build-schema">{CART_SCHEMA}</code> · reload{' '}
          <code data-testid="reload-strategy">{RELOAD_STRATEGY}</code>
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
          <p>{stale ? 'No cart: this version no longer answers.' : 'Loading…'}</p>
        )}
      </section>

      <section className="status">
        <h2>Connection</h2>
        <dl>
          <dt>served by</dt>
          <dd>
            <code data-testid="served-by">{poll.servedBy ?? '—'}</code>
            {stale?.reason === 'retired' && !poll.servedBy && <span> the load balancer: retired answer</span>}
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
          <dt>skew reported</dt>
          <dd data-testid="skews" className={poll.skews ? 'bad' : 'good'}>
            {poll.skews}
          </dd>
          <dt>stale</dt>
          <dd data-testid="stale-reason">{stale?.reason ?? '—'}</dd>
          <dt>last error</dt>
          <dd data-testid="last-error">{poll.lastError ?? '—'}</dd>
          <dt>updated</dt>
          <dd data-testid="updated">
            {poll.updatedAt ? poll.updatedAt.toISOString().slice(11, 23) : '—'}
            {stale && ' (stopped: this version no longer answers)'}
          </dd>
        </dl>
      </section>
    </main>
  );
}
