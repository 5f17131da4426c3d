// The browser test: real headless Chromium tabs running the example app against the live local
// world (moto, the ECS emulator, the real hook processes, real `checkout` backends and the ALB
// data plane), through one origin that serves the published frontend and forwards `/v2/*` to
// the data plane (e2e/cdn.mjs).
//
//   1. tab 1 (reload: prompt) and tab 3 (reload: immediate) load build A (cart schema v1);
//   2. deploy B (v2, a breaking change): B under test traffic, A pinned;
//   3. B takes production, the skew window starts, the frontend CDN publishes B;
//   4. tab 2 opens, loads build B and is served by B, while tabs 1 and 3 are still served by A;
//   5. after the window A's pin no longer routes to A: with afterWindow retired, the retired
//      answer; with fallthrough, A's calls fall through to B and `onSkew` reports it. Either way
//      tab 1 shows "New version available — reload", and tab 3 reloads by itself, exactly once,
//      and lands on build B, served by B;
//   6. the deployment completes;
//   7. tab 1's reload button reloads it (once) onto build B, served by B;
//   8. tab 4 opens on a CDN edge that still serves build A, whose version is gone for good: it
//      reloads once, gets A again, and does not reload again (the reload budget);
//   9. tab 2 never noticed anything; every tab loaded exactly as often as expected.
// Tabs 1 and 3 must not see a single validation error (nor any HTTP or network error, nor a
// skew report) from start to the end of the window; tab 2 none at all. A screenshot of each step
// goes to target/browser-test/ (NN-*.png), with report.json, the world's log and the browsers'
// console. Exits 1 if any expectation fails.
//
// Needs: the example app built for A and B (npm run build:e2e), the Rust binaries
// (cargo build --workspace --bins), moto (./dev setup) and Chromium at /usr/bin/chromium.
// Options: --world BIN, --builds DIR, --out DIR, --chromium PATH, --a ID, --b ID,
// --skew-window 8s, --after-window retired|fallthrough|default (default: retired; `default`
// leaves the setting out, which is fallthrough).

import { spawn } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { startCdn } from './cdn.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const APP = path.resolve(HERE, '..');
const ROOT = path.resolve(APP, '../..');

const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

function parseArgs(argv) {
  const targetDir = process.env.CARGO_TARGET_DIR || path.join(ROOT, 'target');
  const options = {
    world: path.join(targetDir, 'debug', 'browser-world'),
    builds: path.join(APP, 'dist'),
    out: path.join(ROOT, 'target', 'browser-test'),
    chromium: '/usr/bin/chromium',
    a: 'a1b2c3d',
    b: 'b2c3d4e',
    skewWindow: '8s',
    afterWindow: 'retired',
  };
  const flags = {
    '--world': 'world',
    '--builds': 'builds',
    '--out': 'out',
    '--chromium': 'chromium',
    '--a': 'a',
    '--b': 'b',
    '--skew-window': 'skewWindow',
    '--after-window': 'afterWindow',
  };
  for (let i = 0; i < argv.length; i += 2) {
    const key = flags[argv[i]];
    if (!key || argv[i + 1] === undefined) throw new Error(`unknown option or missing value: ${argv[i]}`);
    options[key] = argv[i + 1];
  }
  if (!['retired', 'fallthrough', 'default'].includes(options.afterWindow)) {
    throw new Error('--after-window must be retired, fallthrough or default');
  }
  const seconds = /^(\d+)s$/.exec(options.skewWindow);
  if (!seconds) throw new Error('--skew-window must be whole seconds, e.g. 8s');
  options.windowMs = Number(seconds[1]) * 1000;
  return options;
}

const started = Date.now();
const since = () => ((Date.now() - started) / 1000).toFixed(1).padStart(5) + 's';
const say = (line) => console.log(`${since()}  ${line}`);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** The `browser-world` process: JSON lines out, commands in. */
class World {
  constructor(child, logPath) {
    this.child = child;
    this.events = [];
    this.waiters = new Set();
    this.exited = null;
    this.logTail = [];
    const log = createWriteStream(logPath);
    readline.createInterface({ input: child.stderr }).on('line', (line) => {
      log.write(`${line}\n`);
      this.logTail.push(line);
      if (this.logTail.length > 24) this.logTail.shift();
    });
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      log.write(`[event] ${line}\n`);
      let event;
      try {
        event = JSON.parse(line);
      } catch {
        return;
      }
      event.receivedAt = Date.now();
      this.events.push(event);
      this.wake();
    });
    child.on('exit', (code, signal) => {
      this.exited = { code, signal };
      this.wake();
    });
  }

  static start(bin, args, logPath) {
    if (!existsSync(bin)) {
      throw new Error(`${bin} does not exist: build it with \`cargo build --workspace --bins\``);
    }
    const child = spawn(bin, args, { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'] });
    return new World(child, logPath);
  }

  wake() {
    for (const waiter of this.waiters) waiter();
  }

  /** The first event from index `from` on that matches, waiting up to `timeoutMs`. */
  waitFor(what, predicate, { from = 0, timeoutMs = 60_000 } = {}) {
    return new Promise((resolve, reject) => {
      const check = () => {
        const found = this.events.slice(from).find(predicate);
        if (found) return finish(() => resolve(found));
        const rolledBack = this.events
          .slice(from)
          .find((e) => e.event === 'deployed' && e.outcome !== 'succeeded' && !predicate(e));
        if (rolledBack) {
          return finish(() =>
            reject(
              new Error(
                `the deployment of ${rolledBack.deploymentId} ended ${rolledBack.outcome} (${rolledBack.reason}) before ${what}`,
              ),
            ),
          );
        }
        const fatal = this.events.find((e) => e.event === 'error');
        if (fatal) return finish(() => reject(new Error(`browser-world: ${fatal.message}`)));
        if (this.exited) {
          return finish(() =>
            reject(new Error(`browser-world exited (${JSON.stringify(this.exited)}) before ${what}\n${this.tail()}`)),
          );
        }
      };
      const timer = setTimeout(
        () =>
          finish(() => reject(new Error(`timed out after ${timeoutMs / 1000}s waiting for ${what}\n${this.tail()}`))),
        timeoutMs,
      );
      const finish = (settle) => {
        clearTimeout(timer);
        this.waiters.delete(check);
        settle();
      };
      this.waiters.add(check);
      check();
    });
  }

  send(line) {
    this.child.stdin.write(`${line}\n`);
  }

  tail() {
    return this.logTail.map((l) => `    world | ${l}`).join('\n');
  }

  async stop() {
    if (this.exited) return this.events.find((e) => e.event === 'bye');
    this.send('quit');
    const bye = await this.waitFor('bye', (e) => e.event === 'bye', { timeoutMs: 20_000 }).catch(() => undefined);
    await Promise.race([new Promise((r) => this.child.once('exit', r)), sleep(10_000)]);
    if (!this.exited) this.child.kill('SIGKILL');
    return bye;
  }
}

/** What a tab shows, read from its DOM. */
async function readTab(page) {
  return page.evaluate(() => {
    const text = (id) => document.querySelector(`[data-testid="${id}"]`)?.textContent ?? null;
    const number = (id) => Number(text(id) ?? NaN);
    return {
      build: text('build-id'),
      schema: text('build-schema'),
      servedBy: text('served-by'),
      requests: number('requests'),
      valid: number('valid'),
      validationErrors: number('validation-errors'),
      httpErrors: number('http-errors'),
      networkErrors: number('network-errors'),
      lastError: text('last-error'),
      total: text('total'),
      banner: text('banner'),
      bannerCurrent: text('banner-current'),
      reloadRefused: text('reload-refused') !== null,
      skews: number('skews'),
      staleReason: text('stale-reason'),
      reloadStrategy: text('reload-strategy'),
    };
  });
}

/** Waits until the tab shows what `predicate` wants; throws with the last reading otherwise. */
async function waitForTab(tab, what, predicate, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    try {
      last = await readTab(tab.page);
      if (predicate(last)) return last;
    } catch (error) {
      last = { error: String(error) }; // mid-navigation
    }
    await sleep(100);
  }
  throw new Error(
    `${tab.name}: timed out after ${timeoutMs / 1000}s waiting until ${what}; it shows ${JSON.stringify(last)}`,
  );
}

/**
 * Samples a tab every 150 ms; each reading that breaks `rule` is a failure (the first reading
 * per reason is kept, with how many more broke it the same way).
 */
function monitor(tab, rule) {
  const samples = [];
  const broken = new Map();
  let running = true;
  const done = (async () => {
    while (running) {
      try {
        const sample = { at: Date.now(), ...(await readTab(tab.page)) };
        samples.push(sample);
        // A page just (re)loaded that React has not rendered yet shows nothing to judge.
        const reason = sample.build === null ? null : rule(sample);
        if (reason) {
          const seen = broken.get(reason);
          if (seen) seen.count++;
          else broken.set(reason, { sample, count: 1 });
        }
      } catch {
        // navigating (a reload): nothing to read for a moment
      }
      await sleep(150);
    }
  })();
  return {
    samples,
    /** Stops sampling; returns one failure line per reason. */
    stop: async () => {
      running = false;
      await done;
      return [...broken].map(
        ([reason, { sample, count }]) =>
          `${tab.name} from ${((sample.at - started) / 1000).toFixed(1)}s: ${reason} (${count} readings; first: ${JSON.stringify(sample)})`,
      );
    },
  };
}

async function main() {
  const options = parseArgs(process.argv.slice(2));
  const { a: A, b: B } = options;
  const retiredMode = options.afterWindow === 'retired';
  rmSync(options.out, { recursive: true, force: true });
  mkdirSync(options.out, { recursive: true });
  for (const id of [A, B]) {
    if (!existsSync(path.join(options.builds, id, 'index.html'))) {
      throw new Error(`no frontend build ${path.join(options.builds, id)}: run \`npm run build:e2e\` in examples/web`);
    }
  }
  if (!existsSync(options.chromium)) {
    throw new Error(`${options.chromium} does not exist: apt-get install -y chromium`);
  }

  const report = { options, steps: [], failures: [], events: null, tabs: {} };
  const failures = report.failures;
  const tabs = [];
  const console_ = createWriteStream(path.join(options.out, 'browser-console.log'));
  let world;
  let cdn;
  let staleCdn;
  let browser;
  let stepNumber = 0;

  const screenshot = async (tab, label) => {
    const file = `${String(stepNumber).padStart(2, '0')}-${label}.png`;
    await tab.page.screenshot({ path: path.join(options.out, file), fullPage: true });
    return file;
  };
  const step = async (name, body) => {
    stepNumber++;
    const stepStarted = Date.now();
    say(`step ${stepNumber}: ${name}`);
    const record = { number: stepNumber, name, ok: false, screenshots: [] };
    report.steps.push(record);
    await body(record);
    record.ok = true;
    record.seconds = (Date.now() - stepStarted) / 1000;
  };
  /**
   * Opens `url` in a new tab, counting the tab's page loads (each document committed in its
   * main frame: a reload that starts before the page finished loading counts too) and keeping
   * its console.
   */
  const openTab = async (name, url, waitUntil = 'load') => {
    const page = await context.newPage();
    const tab = { name, page, loads: 0, console: [] };
    page.on('framenavigated', (frame) => {
      if (frame === page.mainFrame()) tab.loads++;
    });
    page.on('pageerror', (error) => failures.push(`${name}: uncaught error in the page: ${error.message}`));
    page.on('console', (message) => {
      tab.console.push(message.text());
      console_.write(`${since()} ${name} ${message.type()}: ${message.text()}\n`);
    });
    tabs.push(tab);
    await page.goto(url, { waitUntil });
    return tab;
  };
  let context;
  const monitors = [];
  const watch = (tab, rule) => {
    const m = monitor(tab, rule);
    monitors.push(m);
    report.tabs[tab.name] = m.samples;
  };

  try {
    say(
      `starting browser-world (${A} on cart schema v1; skewWindow ${options.skewWindow}, afterWindow ${options.afterWindow})`,
    );
    world = World.start(
      options.world,
      [
        '--deployment-id',
        A,
        '--schema',
        'v1',
        '--skew-window',
        options.skewWindow,
        '--poll-interval',
        '1s',
        '--after-window',
        options.afterWindow,
      ],
      path.join(options.out, 'world.log'),
    );
    const ready = await world.waitFor('the world to be ready', (e) => e.event === 'ready', { timeoutMs: 120_000 });
    say(`world ready: data plane ${ready.url}, hookDetails ${JSON.stringify(ready.hookDetails)}`);
    cdn = await startCdn({
      api: ready.url,
      builds: { [A]: path.join(options.builds, A), [B]: path.join(options.builds, B) },
      current: A,
      log: (line) => say(`cdn: ${line}`),
    });
    say(`frontend origin ${cdn.url} (publishes ${A}; /v2/* goes to the data plane)`);
    browser = await chromium.launch({ executablePath: options.chromium, headless: true, args: CHROMIUM_ARGS });
    say(`chromium ${browser.version()}`);
    // One browser context for all tabs: they share cookies and storage, as tabs of one browser
    // do. The pin is a header in each tab's own JavaScript, so no tab can re-pin another.
    context = await browser.newContext({ viewport: { width: 900, height: 720 } });

    let tab1;
    let tab2;
    let tab3;
    let holdingAt;
    let deployFrom;
    // How a tab learns that A is gone, after the window.
    const staleReason = retiredMode ? 'retired' : 'skew';

    const servedValid = (build, schema) => (s) =>
      s.build === build && s.schema === schema && s.servedBy === build && s.valid >= 3;

    await step(
      `tabs 1 (reload: prompt) and 3 (reload: immediate) load build ${A} (v1), served by ${A}`,
      async (record) => {
        tab1 = await openTab('tab 1', cdn.url);
        tab3 = await openTab('tab 3', `${cdn.url}/?reload=immediate`);
        record.tab1 = await waitForTab(tab1, `build ${A} shows a valid cart served by ${A}`, servedValid(A, 'v1'));
        record.tab3 = await waitForTab(tab3, `build ${A} shows a valid cart served by ${A}`, servedValid(A, 'v1'));
        if (record.tab1.reloadStrategy !== 'prompt' || record.tab3.reloadStrategy !== 'immediate') {
          throw new Error(`reload strategies ${record.tab1.reloadStrategy} and ${record.tab3.reloadStrategy}`);
        }
        record.screenshots.push(await screenshot(tab1, `tab1-loads-build-${A}`));
      },
    );

    // From here until the window ends, tabs 1 and 3 must be served by A without a single error
    // or skew report. After it, A's pin no longer routes to A: with fallthrough, answers from B,
    // the one skew report and the validation error it comes with are what the tab is told
    // about; with retired, the retired answer. Once reloaded, a tab runs B without an error.
    const windowOver = () => holdingAt !== undefined && Date.now() >= holdingAt + options.windowMs - 1000;
    const onB = (s) => {
      if (s.servedBy !== B && s.servedBy !== '—') return `served by ${s.servedBy}, not ${B}`;
      if (s.validationErrors + s.httpErrors + s.networkErrors > 0) return 'an error';
      if (s.skews > 0) return 'a skew report';
      if (s.banner !== null) return 'the reload banner';
      return null;
    };
    const onAThenB = (s) => {
      if (s.build === B) return onB(s);
      if (s.build !== A) return `build ${s.build}`;
      if (!windowOver()) {
        if (s.banner !== null) return 'the reload banner before the skew window ended';
        if (s.skews > 0) return 'a skew report before the skew window ended';
      }
      if (s.staleReason !== '—' && s.staleReason !== staleReason)
        return `stale for ${s.staleReason}, not ${staleReason}`;
      if (s.skews > (retiredMode ? 0 : 1)) return `${s.skews} skew reports`;
      const skewOk = !retiredMode && windowOver();
      if (s.servedBy !== A && s.servedBy !== '—' && !skewOk) return `served by ${s.servedBy}, not ${A}`;
      if (s.validationErrors > (skewOk ? 1 : 0)) return `${s.validationErrors} validation errors`;
      if (s.httpErrors > 0 || s.networkErrors > 0) return 'an HTTP or network error';
      return null;
    };
    watch(tab1, onAThenB);
    watch(tab3, onAThenB);

    await step(`deploy ${B} (v2): ${B} under test traffic, tabs 1 and 3 pinned to ${A}`, async (record) => {
      deployFrom = world.events.length;
      world.send(`deploy ${B} v2`);
      const event = await world.waitFor(
        'POST_TEST_TRAFFIC_SHIFT',
        (e) => e.event === 'step' && e.step === 'after POST_TEST_TRAFFIC_SHIFT',
        {
          from: deployFrom,
        },
      );
      record.rules = event.rules;
      if (!event.rules.some((r) => r.kind === `pin ${A}`))
        throw new Error(`no pin for ${A} after POST_TEST_TRAFFIC_SHIFT: ${JSON.stringify(event.rules)}`);
      const before = (await readTab(tab1.page)).requests;
      record.tab1 = await waitForTab(
        tab1,
        `2 more answers from ${A}`,
        (s) => s.requests >= before + 2 && s.servedBy === A,
      );
      record.screenshots.push(await screenshot(tab1, `tab1-pinned-to-${A}-while-${B}-in-test`));
    });

    await step(
      `${B} takes production; skew window starts; the CDN publishes frontend ${B}; tab 1 still on ${A}`,
      async (record) => {
        const event = await world.waitFor(
          'POST_PRODUCTION_TRAFFIC_SHIFT holding',
          (e) => e.event === 'step' && e.step.startsWith('POST_PRODUCTION_TRAFFIC_SHIFT holding'),
          { from: deployFrom },
        );
        holdingAt = event.receivedAt;
        record.rules = event.rules;
        record.ledger = event.ledger;
        cdn.publish(B);
        const before = (await readTab(tab1.page)).requests;
        record.tab1 = await waitForTab(
          tab1,
          `2 more answers from ${A}`,
          (s) => s.requests >= before + 2 && s.servedBy === A,
        );
        record.screenshots.push(await screenshot(tab1, `tab1-still-${A}-after-${B}-took-production`));
      },
    );

    await step(
      `tab 2 opens, loads build ${B} (v2) and is served by ${B}; tabs 1 and 3 still served by ${A}`,
      async (record) => {
        tab2 = await openTab('tab 2', cdn.url);
        watch(tab2, (s) => (s.build !== B ? `build ${s.build}, not ${B}` : onB(s)));
        record.tab2 = await waitForTab(tab2, `build ${B} shows a valid cart served by ${B}`, servedValid(B, 'v2'));
        record.tab1 = await readTab(tab1.page);
        record.tab3 = await readTab(tab3.page);
        for (const [name, seen] of [
          ['tab 1', record.tab1],
          ['tab 3', record.tab3],
        ]) {
          if (seen.build !== A || seen.servedBy !== A)
            throw new Error(`${name} shows build ${seen.build} served by ${seen.servedBy} once tab 2 opened`);
        }
        if (Date.now() >= holdingAt + options.windowMs) {
          throw new Error('the skew window ended before tab 2 was checked: use a longer --skew-window on this machine');
        }
        record.screenshots.push(await screenshot(tab2, `tab2-loads-build-${B}`));
        record.screenshots.push(await screenshot(tab1, `tab1-still-${A}-beside-tab2`));
      },
    );

    const how = retiredMode ? 'the retired answer' : `a fall-through to ${B}, reported by onSkew`;
    await step(
      `the skew window ends (${how}): tab 1 shows "New version available — reload"; tab 3 reloads itself once onto ${B}`,
      async (record) => {
        const seen = await waitForTab(
          tab1,
          'the reload banner shows',
          (s) => s.banner !== null && (retiredMode || s.servedBy === B),
          options.windowMs + 30_000,
        );
        record.tab1 = seen;
        record.afterHoldStart = (Date.now() - holdingAt) / 1000;
        const expected = retiredMode
          ? { staleReason: 'retired', skews: 0, validationErrors: 0, bannerCurrent: B, reloadRefused: false }
          : // The answer that fell through was B's cart: the one validation error it caused is
            // what the app was told about, once, before it stopped polling.
            { staleReason: 'skew', skews: 1, validationErrors: 1, bannerCurrent: B, reloadRefused: false };
        for (const [key, value] of Object.entries(expected)) {
          if (seen[key] !== value)
            throw new Error(
              `tab 1 shows ${key} ${JSON.stringify(seen[key])}, not ${JSON.stringify(value)}: ${JSON.stringify(seen)}`,
            );
        }
        if (!seen.banner.includes('New version available — reload'))
          throw new Error(`banner says ${JSON.stringify(seen.banner)}`);
        record.screenshots.push(await screenshot(tab1, `tab1-banner-${staleReason}`));
        record.tab3 = await waitForTab(
          tab3,
          `tab 3 reloaded onto build ${B}, served by ${B}`,
          servedValid(B, 'v2'),
          30_000,
        );
        if (tab3.loads !== 2) throw new Error(`tab 3 loaded ${tab3.loads} times, not 2`);
        const skewReport = `skewguard: deployment ${B} answered a request pinned to ${A}`;
        if (tab3.console.includes(skewReport) !== !retiredMode) {
          throw new Error(
            `tab 3's console ${retiredMode ? 'has' : 'lacks'} the skew report ${JSON.stringify(skewReport)}`,
          );
        }
        record.screenshots.push(await screenshot(tab3, `tab3-reloaded-itself-onto-${B}`));
      },
    );

    await step(`the deployment of ${B} completes`, async (record) => {
      const done = await world.waitFor(`the deployment of ${B} to end`, (e) => e.event === 'deployed', {
        from: deployFrom,
        timeoutMs: 60_000,
      });
      record.outcome = done;
      if (done.outcome !== 'succeeded') throw new Error(`the deployment of ${B} ended ${done.outcome}: ${done.reason}`);
      record.rules = world.events.filter((e) => e.event === 'step').at(-1)?.rules;
      record.tab1 = await readTab(tab1.page);
      record.screenshots.push(await screenshot(tab1, `tab1-after-the-deployment`));
    });

    await step(`tab 1's reload button reloads it onto build ${B}, served by ${B}`, async (record) => {
      await tab1.page.getByTestId('reload').click();
      record.tab1 = await waitForTab(
        tab1,
        `build ${B} shows a valid cart served by ${B}`,
        (s) => servedValid(B, 'v2')(s) && onB(s) === null,
      );
      if (tab1.loads !== 2) throw new Error(`tab 1 loaded ${tab1.loads} times, not 2`);
      record.screenshots.push(await screenshot(tab1, `tab1-reloaded-gets-${B}`));
    });

    await step(
      `tab 4, on a CDN edge still serving build ${A} (gone for good), reloads once and not again`,
      async (record) => {
        // A stale edge cache: it still serves A's index.html after the deployment. Reloading
        // cannot help, and the reload budget stops the tab from trying again and again.
        staleCdn = await startCdn({
          api: ready.url,
          builds: { [A]: path.join(options.builds, A) },
          current: A,
          log: (line) => say(`stale cdn: ${line}`),
        });
        // It may reload before its first load event: wait for nothing but the first document.
        const tab4 = await openTab('tab 4', `${staleCdn.url}/?reload=immediate`, 'commit');
        record.tab4 = await waitForTab(
          tab4,
          `the banner saying that reloading did not help`,
          (s) => s.build === A && s.reloadRefused && s.banner !== null,
        );
        // Several poll intervals in which nothing may happen any more.
        await sleep(3_000);
        record.tab4 = await readTab(tab4.page);
        const t = record.tab4;
        if (tab4.loads !== 2) throw new Error(`tab 4 loaded ${tab4.loads} times, not 2`);
        if (t.staleReason !== staleReason || t.skews !== (retiredMode ? 0 : 1) || t.httpErrors + t.networkErrors > 0) {
          throw new Error(`tab 4 shows ${JSON.stringify(t)}`);
        }
        record.screenshots.push(await screenshot(tab4, `tab4-stale-edge-reloaded-once`));
      },
    );

    await step(
      `tab 2 stayed on ${B} without an error throughout; every tab loaded as often as expected`,
      async (record) => {
        record.tab2 = await readTab(tab2.page);
        const t = record.tab2;
        if (t.servedBy !== B || t.validationErrors + t.httpErrors + t.networkErrors + t.skews > 0) {
          throw new Error(`tab 2 shows ${JSON.stringify(t)}`);
        }
        record.loads = Object.fromEntries(tabs.map((tab) => [tab.name, tab.loads]));
        const expected = { 'tab 1': 2, 'tab 2': 1, 'tab 3': 2, 'tab 4': 2 };
        if (Object.entries(expected).some(([name, loads]) => record.loads[name] !== loads)) {
          throw new Error(`page loads per tab ${JSON.stringify(record.loads)}, not ${JSON.stringify(expected)}`);
        }
        record.screenshots.push(await screenshot(tab2, `tab2-still-${B}`));
      },
    );
  } catch (error) {
    failures.push(`step ${stepNumber}: ${error.message ?? error}`);
    for (const tab of tabs) {
      const file = `${String(stepNumber).padStart(2, '0')}-FAILED-${tab.name.replace(' ', '')}.png`;
      await tab.page.screenshot({ path: path.join(options.out, file), fullPage: true }).catch(() => {});
    }
  } finally {
    for (const m of monitors) failures.push(...(await m.stop()));
    await browser?.close().catch(() => {});
    await cdn?.close();
    await staleCdn?.close();
    if (world) {
      const bye = await world.stop();
      report.events = world.events;
      if (!bye) failures.push('browser-world did not say bye');
      else if (bye.violations.length > 0) failures.push(...bye.violations.map((v) => `invariant violated: ${v}`));
    }
    console_.end();
  }

  report.seconds = (Date.now() - started) / 1000;
  report.ok = failures.length === 0;
  writeFileSync(path.join(options.out, 'report.json'), `${JSON.stringify(report, null, 2)}\n`);
  const pngs = readdirSync(options.out)
    .filter((f) => f.endsWith('.png'))
    .sort();
  console.log(`\nscreenshots in ${path.relative(process.cwd(), options.out) || '.'}: ${pngs.join(', ')}`);
  for (const s of report.steps)
    console.log(`  ${s.ok ? 'ok  ' : 'FAIL'} ${s.number}. ${s.name}${s.seconds ? ` (${s.seconds.toFixed(1)}s)` : ''}`);
  const reads = Object.entries(report.tabs).map(([name, samples]) => `${name} ${samples.length}`);
  console.log(`tabs read: ${reads.join(', ')} times`);
  if (failures.length > 0) {
    console.log(`\nFAILED (${failures.length}):`);
    for (const f of failures) console.log(`  - ${f}`);
    if (world) console.log(`\nlast lines of the world's log:\n${world.tail()}`);
    return 1;
  }
  console.log(`\nbrowser test passed in ${report.seconds.toFixed(1)}s`);
  return 0;
}

main().then(
  (code) => process.exit(code),
  (error) => {
    console.error(`browser test: ${error.stack ?? error}`);
    process.exit(1);
  },
);
