import { createCartStore } from './store';
import { CART_SCHEMA, DEPLOYMENT_ID, POLL_MS, RELOAD_STRATEGY } from './config';

/**
 * The page's one store. Its `apiFetch` sends same-origin calls with this build's deployment ID
 * in `X-Deployment-ID`, so the load balancer keeps sending them to the backend this build was
 * made for, and checks who answered them: an answer from another deployment is reported
 * (`onSkew`), and once this build's backend is gone the store shows the reload banner and
 * `RELOAD_STRATEGY` decides who reloads the tab.
 */
export const cartStore = createCartStore({
  deploymentId: DEPLOYMENT_ID,
  schema: CART_SCHEMA,
  pollMs: POLL_MS,
  reload: RELOAD_STRATEGY,
});
