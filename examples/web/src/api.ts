import { type RetiredInfo, createPinnedFetch } from '@skewguard/fetch';
import { DEPLOYMENT_ID } from './config';

type Listener = (info: RetiredInfo) => void;
const listeners = new Set<Listener>();

/**
 * The app's one `fetch`: same-origin calls carry this build's deployment ID in
 * `X-Deployment-ID`, so the load balancer keeps sending them to the backend this build was
 * made for; skewguard's "retired" answer is reported to `onRetired` subscribers.
 */
export const apiFetch = createPinnedFetch({
  deploymentId: DEPLOYMENT_ID,
  onRetired: (info) => listeners.forEach((listener) => listener(info)),
});

/** Calls `listener` when this build's backend has been retired (at once if it already was). */
export function onRetired(listener: Listener): () => void {
  listeners.add(listener);
  if (apiFetch.retired) listener(apiFetch.retired);
  return () => listeners.delete(listener);
}
