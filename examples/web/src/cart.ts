// The cart API as each frontend version reads it. Mirrors `validate_cart` in
// tests/src/backend.rs: each version requires the fields it reads and ignores additions, as a
// lenient JSON client does (a v2 client accepts a v3 cart; a v1 client rejects a v2 cart,
// because `total_cents` was renamed; a v3 client rejects a v2 cart, which has no `schema`).

export type Schema = 'v1' | 'v2' | 'v3';

export const SCHEMAS: readonly Schema[] = ['v1', 'v2', 'v3'];

export function isSchema(value: unknown): value is Schema {
  return typeof value === 'string' && (SCHEMAS as readonly string[]).includes(value);
}

/** A cart as the UI shows it, whatever the schema it came in. */
export interface Cart {
  items: Array<{ sku: string; qty: number; priceMinor: number }>;
  totalMinor: number;
  currency: string;
}

type Result = { ok: true; cart: Cart } | { ok: false; error: string };

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Reads `body` as a cart of `schema`, or says why a frontend built for it cannot. */
export function readCart(schema: Schema, body: unknown): Result {
  const [totalKey, priceKey] =
    schema === 'v1' ? ['total_cents', 'price_cents'] : ['total_minor_units', 'price_minor_units'];
  const fail = (error: string): Result => ({ ok: false, error: `${schema} cart: ${error}` });
  const integer = (object: Record<string, unknown>, key: string, at: string): string | null => {
    const v = object[key];
    if (v === undefined) return `${at}${key} is missing`;
    if (typeof v !== 'number' || !Number.isInteger(v)) {
      return `${at}${key} is not an integer: ${JSON.stringify(v)}`;
    }
    return null;
  };

  if (!isObject(body)) return fail(`expected a JSON object, got ${JSON.stringify(body)}`);
  if (!Array.isArray(body.items)) return fail('items is missing or not an array');
  const items: Cart['items'] = [];
  for (const [i, item] of body.items.entries()) {
    const at = `items[${i}].`;
    if (!isObject(item)) return fail(`${at} is not an object`);
    if (typeof item.sku !== 'string') return fail(`${at}sku is missing or not a string`);
    const bad = integer(item, 'qty', at) ?? integer(item, priceKey, at);
    if (bad) return fail(bad);
    items.push({ sku: item.sku, qty: item.qty as number, priceMinor: item[priceKey] as number });
  }
  const bad = integer(body, totalKey, '');
  if (bad) return fail(bad);
  if (typeof body.currency !== 'string') return fail('currency is missing or not a string');
  if (schema === 'v3') {
    if (body.schema !== 3) {
      return { ok: false, error: `v3 cart: schema must be 3, got ${JSON.stringify(body.schema ?? 'nothing')}` };
    }
    if (!Array.isArray(body.discounts)) {
      return { ok: false, error: 'v3 cart: discounts is missing or not an array' };
    }
  }
  return { ok: true, cart: { items, totalMinor: body[totalKey] as number, currency: body.currency } };
}

export function formatMoney(minor: number, currency: string): string {
  try {
    return new Intl.NumberFormat('en', { style: 'currency', currency }).format(minor / 100);
  } catch {
    return `${(minor / 100).toFixed(2)} ${currency}`;
  }
}
