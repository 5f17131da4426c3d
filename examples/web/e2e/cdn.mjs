// A tiny stand-in for CloudFront in front of S3 and the ALB: one origin that serves the
// *published* frontend build and forwards the API paths to the load balancer (the local data
// plane), so the app and its API share an origin, as they do behind one domain in production.
//
// - `/v2/*` (the API prefixes) is proxied to `api` with method, path, query, headers (the pin
//   header included) and body; the answer's status, headers (X-Deployment-ID included) and body
//   come back unchanged, minus hop-by-hop headers.
// - Everything else is a static file. `index.html` (and any unknown path without a file
//   extension: SPA fallback) comes from the published build; other files are looked up in the
//   published build first, then in every other build, as on S3 when a deploy uploads new hashed
//   assets without deleting old ones, so a tab still running an old build keeps loading its
//   lazy chunks.
// - `publish(name)` switches the published build: the frontend deploy. Tabs already open keep
//   running the JavaScript they loaded; a new tab or a reload gets the new build.
//
// As a program: node e2e/cdn.mjs --api http://127.0.0.1:PORT --build a1b2c3d=dist/a1b2c3d
//   [--build b2c3d4e=dist/b2c3d4e] [--current a1b2c3d] [--port 8080]
// prints its URL; `publish NAME` on stdin switches the published build.

import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import readline from 'node:readline';
import { pathToFileURL } from 'node:url';

const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-authenticate',
  'proxy-authorization',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.map': 'application/json',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.txt': 'text/plain; charset=utf-8',
  '.woff2': 'font/woff2',
};

/**
 * Starts the CDN on 127.0.0.1.
 * @param {{api: string, builds: Record<string, string>, current: string, port?: number,
 *          apiPrefixes?: string[], log?: (line: string) => void}} options
 */
export async function startCdn({ api, builds, current, port = 0, apiPrefixes = ['/v2/'], log = () => {} }) {
  const dirs = new Map(Object.entries(builds).map(([name, dir]) => [name, path.resolve(dir)]));
  if (!dirs.has(current)) throw new Error(`no build named ${current}`);
  let published = current;
  const upstream = new URL(api);
  const agent = new http.Agent({ keepAlive: true });
  const stats = { api: 0, static: 0, notFound: 0, upstreamErrors: 0 };

  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://cdn.invalid');
    if (apiPrefixes.some((prefix) => url.pathname.startsWith(prefix))) {
      stats.api++;
      proxy(req, res);
    } else {
      stats.static++;
      serveStatic(url.pathname, req, res).catch((error) => {
        log(`static ${url.pathname}: ${error}`);
        if (!res.headersSent) res.writeHead(500).end();
      });
    }
  });

  function proxy(req, res) {
    const headers = {};
    for (const [name, value] of Object.entries(req.headers)) {
      if (!HOP_BY_HOP.has(name)) headers[name] = value;
    }
    const client = req.socket.remoteAddress ?? '';
    headers['x-forwarded-for'] = headers['x-forwarded-for'] ? `${headers['x-forwarded-for']}, ${client}` : client;
    headers['x-forwarded-host'] = req.headers.host ?? '';
    headers['x-forwarded-proto'] = 'http';
    const forward = http.request(
      {
        protocol: upstream.protocol,
        hostname: upstream.hostname,
        port: upstream.port,
        method: req.method,
        path: req.url,
        headers,
        agent,
      },
      (answer) => {
        const out = {};
        for (const [name, value] of Object.entries(answer.headers)) {
          if (!HOP_BY_HOP.has(name)) out[name] = value;
        }
        res.writeHead(answer.statusCode ?? 502, answer.statusMessage, out);
        answer.pipe(res);
      },
    );
    forward.on('error', (error) => {
      stats.upstreamErrors++;
      log(`proxy ${req.method} ${req.url}: ${error.message}`);
      if (!res.headersSent) {
        res.writeHead(502, { 'content-type': 'text/plain', 'x-cdn-error': error.message });
      }
      res.end(`bad gateway: ${error.message}\n`);
    });
    req.pipe(forward);
  }

  async function serveStatic(pathname, req, res) {
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    let relative;
    try {
      relative = decodeURIComponent(pathname);
    } catch {
      res.writeHead(400).end();
      return;
    }
    if (relative.endsWith('/')) relative += 'index.html';
    const order = [published, ...[...dirs.keys()].filter((name) => name !== published)];
    // index.html only ever comes from the published build.
    const candidates = relative === '/index.html' ? [published] : order;
    for (const name of candidates) {
      const file = inside(dirs.get(name), relative);
      if (file && (await isFile(file))) {
        send(res, req, file, name);
        return;
      }
    }
    if (path.extname(relative) === '') {
      send(res, req, path.join(dirs.get(published), 'index.html'), published);
      return;
    }
    stats.notFound++;
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
  }

  function send(res, req, file, build) {
    const immutable = file.includes(`${path.sep}assets${path.sep}`);
    res.writeHead(200, {
      'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream',
      'cache-control': immutable ? 'public, max-age=31536000, immutable' : 'no-cache',
      'x-frontend-build': build,
    });
    if (req.method === 'HEAD') res.end();
    else createReadStream(file).pipe(res);
  }

  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', resolve);
  });
  const address = server.address();
  return {
    url: `http://127.0.0.1:${address.port}`,
    stats,
    get published() {
      return published;
    },
    publish(name) {
      if (!dirs.has(name)) throw new Error(`no build named ${name}`);
      published = name;
      log(`published frontend build ${name}`);
    },
    close() {
      agent.destroy();
      server.closeAllConnections();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

/** `root` + `relative` if it stays inside `root`. */
function inside(root, relative) {
  const file = path.resolve(root, `.${path.posix.normalize(relative)}`);
  return file === root || file.startsWith(root + path.sep) ? file : null;
}

async function isFile(file) {
  try {
    return (await stat(file)).isFile();
  } catch {
    return false;
  }
}

async function main(argv) {
  const builds = {};
  let api;
  let current;
  let port = 0;
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (value === undefined) throw new Error(`${flag} needs a value`);
    if (flag === '--api') api = value;
    else if (flag === '--build') {
      const [name, dir] = value.split('=');
      if (!dir) throw new Error('--build takes NAME=DIR');
      builds[name] = dir;
      current ??= name;
    } else if (flag === '--current') current = value;
    else if (flag === '--port') port = Number(value);
    else throw new Error(`unknown option ${flag}`);
  }
  if (!api || !current)
    throw new Error('usage: cdn.mjs --api URL --build NAME=DIR [--build ..] [--current NAME] [--port N]');
  const cdn = await startCdn({ api, builds, current, port, log: (line) => console.error(line) });
  console.log(`serving ${current} on ${cdn.url} (API ${api}); type "publish NAME" to switch builds`);
  for await (const line of readline.createInterface({ input: process.stdin })) {
    const [command, name] = line.trim().split(/\s+/);
    try {
      if (command === 'publish') cdn.publish(name);
      else if (command) console.error(`unknown command ${command}`);
    } catch (error) {
      console.error(String(error.message ?? error));
    }
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main(process.argv.slice(2)).catch((error) => {
    console.error(`cdn: ${error.message ?? error}`);
    process.exit(2);
  });
}
