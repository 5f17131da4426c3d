import { defineConfig, loadEnv } from 'vite';
import react from '@vitejs/plugin-react';

// Build-time settings (Vite inlines them into the bundle):
//   VITE_DEPLOYMENT_ID  the backend deployment this build is made for (the git SHA in CI);
//                       unset: requests go out unpinned (local development)
//   VITE_CART_SCHEMA    the cart API version this build reads: v1 (default), v2 or v3
// `npm run dev` proxies the API to SKEWGUARD_API (e.g. a browser-world data plane URL), so the
// app and its API share one origin, as they do behind CloudFront + ALB.
export default defineConfig(({ mode }) => {
  const env = loadEnv(mode, process.cwd(), 'VITE_');
  const schema = env.VITE_CART_SCHEMA || 'v1';
  if (!['v1', 'v2', 'v3'].includes(schema)) {
    throw new Error(`VITE_CART_SCHEMA must be v1, v2 or v3, not ${JSON.stringify(schema)}`);
  }
  const api = process.env.SKEWGUARD_API;
  return {
    plugins: [react()],
    server: api ? { proxy: { '/v2': { target: api } } } : undefined,
    test: { include: ['src/**/*.test.ts'] },
  };
});
