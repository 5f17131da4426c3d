import type { ReloadStrategy } from '@skewguard/fetch';
import { type Schema, isSchema } from './cart';

// Build-time settings, inlined by Vite (see vite.config.ts).

/** The backend deployment this build was made for; `undefined` in an unpinned dev build. */
export const DEPLOYMENT_ID: string | undefined = import.meta.env.VITE_DEPLOYMENT_ID || undefined;

const schema: unknown = import.meta.env.VITE_CART_SCHEMA || 'v1';
if (!isSchema(schema)) {
  throw new Error(`VITE_CART_SCHEMA must be v1, v2 or v3, not ${JSON.stringify(schema)}`);
}
/** The cart API version this build reads. */
export const CART_SCHEMA: Schema = schema;

/** How often the cart is fetched. */
export const POLL_MS = 500;

const STRATEGIES: readonly ReloadStrategy[] = ['prompt', 'idle', 'immediate'];
const requested = new URLSearchParams(globalThis.location?.search ?? '').get('reload') ?? 'prompt';
if (!(STRATEGIES as readonly string[]).includes(requested)) {
  throw new Error(`?reload= must be prompt, idle or immediate, not ${JSON.stringify(requested)}`);
}
/**
 * What the page does once its backend is gone, from the page's URL so that one build shows
 * each: `?reload=prompt` (the default: a banner with a reload button), `idle` or `immediate`.
 */
export const RELOAD_STRATEGY = requested as ReloadStrategy;
