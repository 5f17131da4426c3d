// Builds the example app once per frontend version, the way CI would for each deployment:
//   node e2e/build-frontends.mjs [--out dist] a1b2c3d=v1 b2c3d4e=v2
// builds `VITE_DEPLOYMENT_ID=a1b2c3d VITE_CART_SCHEMA=v1 vite build --outDir dist/a1b2c3d`, etc.
// With no builds named, builds the two the browser test uses.

import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const APP = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const DEFAULT_BUILDS = { a1b2c3d: 'v1', b2c3d4e: 'v2' };

const args = process.argv.slice(2);
let out = path.join(APP, 'dist');
const builds = {};
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--out') out = path.resolve(args[++i]);
  else {
    const [id, schema] = args[i].split('=');
    if (!schema) throw new Error(`expected DEPLOYMENT_ID=SCHEMA, got ${args[i]}`);
    builds[id] = schema;
  }
}
if (Object.keys(builds).length === 0) Object.assign(builds, DEFAULT_BUILDS);

const vite = path.join(APP, 'node_modules', '.bin', 'vite');
for (const [id, schema] of Object.entries(builds)) {
  const started = Date.now();
  const outDir = path.join(out, id);
  const result = spawnSync(vite, ['build', '--outDir', outDir, '--emptyOutDir', '--logLevel', 'warn'], {
    cwd: APP,
    stdio: 'inherit',
    env: { ...process.env, VITE_DEPLOYMENT_ID: id, VITE_CART_SCHEMA: schema },
  });
  if (result.status !== 0) {
    console.error(`building ${id} (${schema}) failed`);
    process.exit(1);
  }
  console.log(
    `built ${id} (cart schema ${schema}) into ${path.relative(process.cwd(), outDir)} in ${((Date.now() - started) / 1000).toFixed(1)}s`,
  );
}
