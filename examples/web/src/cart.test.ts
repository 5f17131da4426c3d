import { describe, expect, it } from 'vitest';
import { readCart } from './cart';

// The same carts and expectations as `validate_cart`'s tests in tests/src/backend.rs.
const v1 = () => ({ items: [{ sku: 'A-1', qty: 2, price_cents: 1250 }], total_cents: 2500, currency: 'EUR' });
const v2 = () => ({
  items: [{ sku: 'A-1', qty: 2, price_minor_units: 1250 }],
  total_minor_units: 2500,
  currency: 'EUR',
});
const v3 = () => ({ ...v2(), schema: 3, discounts: [] });

const error = (r: ReturnType<typeof readCart>) => (r.ok ? null : r.error);

describe('readCart', () => {
  it('accepts each schema for its own client', () => {
    expect(readCart('v1', v1())).toEqual({
      ok: true,
      cart: { items: [{ sku: 'A-1', qty: 2, priceMinor: 1250 }], totalMinor: 2500, currency: 'EUR' },
    });
    expect(readCart('v2', v2()).ok).toBe(true);
    expect(readCart('v3', v3()).ok).toBe(true);
  });

  it('detects skew where it breaks a client', () => {
    expect(error(readCart('v1', v2()))).toContain('price_cents');
    expect(readCart('v1', v3()).ok).toBe(false);
    expect(readCart('v2', v1()).ok).toBe(false);
    expect(error(readCart('v3', v2()))).toContain('schema');
    // Additive change: an older v2 client still renders a v3 cart.
    expect(readCart('v2', v3()).ok).toBe(true);
  });

  it('rejects malformed carts', () => {
    expect(readCart('v1', 'nope').ok).toBe(false);
    expect(readCart('v1', { items: {} }).ok).toBe(false);
    expect(error(readCart('v1', { ...v1(), total_cents: '2500' }))).toContain('not an integer');
    expect(error(readCart('v1', { ...v1(), currency: 1 }))).toContain('currency');
    expect(error(readCart('v3', { ...v3(), discounts: null }))).toContain('discounts');
  });
});
