// Test kit of the console's end-to-end tests: real registry-node processes on loopback,
// the public API through fetch, and Debian's chromium driven by playwright-core.
import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, writeFileSync, renameSync, createWriteStream, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const SCREENSHOTS = process.env.UI_SCREENSHOTS || join(ROOT, 'target', 'ui-screenshots');
const LOGS = join(ROOT, 'target', 'ui-test-logs');
const BINARY = process.env.REGISTRY_NODE_BIN || join(ROOT, 'target', 'debug', 'registry-node');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

/** Polls `f` until it returns a truthy value (returned) or the deadline passes (throws). */
export async function eventually(what, f, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await f();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${last.message}` : ''}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

// === registry-node processes ===

const running = new Set();
process.on('exit', () => { for (const p of running) p.kill('SIGKILL'); });

/**
 * Starts `registry-node args…` with a clean environment and resolves once it printed its
 * listening line: `{ http, data, internal, stop(), kill() }` (addresses as printed).
 */
export async function startNode(name, args) {
  if (!existsSync(BINARY)) {
    throw new Error(`${BINARY} not found: build it first (cargo build -p registry-node) or set REGISTRY_NODE_BIN`);
  }
  mkdirSync(LOGS, { recursive: true });
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('REGISTRY_')));
  env.RUST_LOG = env.RUST_LOG || 'info';
  const child = spawn(BINARY, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(child);
  child.stderr.pipe(createWriteStream(join(LOGS, `${name}.log`)));
  const exited = new Promise((r) => child.once('exit', (code, signal) => { running.delete(child); r({ code, signal }); }));
  const lines = createInterface({ input: child.stdout });
  const listening = await new Promise((resolveLine, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name}: no listening line within 30 s`)), 30000);
    lines.on('line', (line) => {
      try {
        const ev = JSON.parse(line);
        if (ev.event === 'listening') {
          clearTimeout(timer);
          resolveLine(ev);
        }
      } catch (_) { /* not a JSON line */ }
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited (${code ?? signal}) before listening; log: ${join(LOGS, `${name}.log`)}`));
    });
  });
  return {
    name,
    ...listening,
    url: listening.http ? `http://${listening.http}` : undefined,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      return exited;
    },
    async kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      return exited;
    },
  };
}

/** A standalone node on 127.0.0.1:0 with short timings, plus `extra` flags. */
export function startStandalone(name, extra = []) {
  return startNode(name, ['--http-addr', '127.0.0.1:0', '--node-name', name, '--push-delay-ms', '50', ...extra]);
}

/** A membership file that nodes watch (`--members-file`); `write` replaces it atomically. */
export function membersFile() {
  const dir = mkdtempSync(join(tmpdir(), 'registry-ui-members-'));
  const path = join(dir, 'members.json');
  return {
    path,
    write(doc) {
      writeFileSync(`${path}.tmp`, JSON.stringify(doc));
      renameSync(`${path}.tmp`, path);
    },
    remove() { rmSync(dir, { recursive: true, force: true }); },
  };
}

// === the public API ===

export class Api {
  constructor(url, token) {
    this.url = url;
    this.token = token;
  }

  async call(method, path, body, { token = this.token, expect } = {}) {
    const headers = {};
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const res = await fetch(this.url + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await res.text();
    const json = text ? JSON.parse(text) : null;
    if (expect !== undefined ? res.status !== expect : !res.ok) {
      throw new Error(`${method} ${path}: ${res.status} ${text}`);
    }
    return json;
  }

  async session(clientId) {
    const s = await this.call('POST', '/api/v1/sessions', { clientId, ttlSeconds: 600 });
    return s.sessionId;
  }

  publish(sessionId, body) {
    return this.call('POST', `/api/v1/sessions/${sessionId}/publishers`, body);
  }

  unpublish(sessionId, registerId) {
    return this.call('DELETE', `/api/v1/sessions/${sessionId}/publishers/${encodeURIComponent(registerId)}`);
  }

  subscribe(sessionId, body) {
    return this.call('POST', `/api/v1/sessions/${sessionId}/subscribers`, body);
  }

  /** Publishes one publisher for each of `dataIds`, 1,000 per request. */
  async publishMany(sessionId, dataIds, data = ['10.0.0.1:8080']) {
    for (let i = 0; i < dataIds.length; i += 1000) {
      const publishers = dataIds.slice(i, i + 1000).map((dataId) => ({ dataId, data }));
      await this.call('POST', `/api/v1/sessions/${sessionId}/publishers:batch`, { publishers });
    }
  }

  push() {
    return this.call('GET', '/api/v1/admin/push');
  }
}

// === the browser ===

const BROWSER_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

/**
 * Debian's chromium with a fresh profile directory. Requests to anything but loopback fail,
 * so a page that needed the network (a CDN, a web font) would show it.
 */
export async function openBrowser({ width = 1280, height = 900 } = {}) {
  const profile = mkdtempSync(join(tmpdir(), 'registry-ui-profile-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: BROWSER_ARGS,
    viewport: { width, height },
  });
  const offsite = [];
  await context.route((url) => !['127.0.0.1', 'localhost', '[::1]'].includes(url.hostname) && url.protocol !== 'data:', (r) => {
    offsite.push(r.request().url());
    return r.abort();
  });
  return {
    context,
    offsite,
    async page() {
      const page = await context.newPage();
      const problems = [];
      page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
      page.on('console', (m) => { if (m.type() === 'error' && !/status of (401|403|429|503)/.test(m.text())) problems.push(`console: ${m.text()}`); });
      page.problems = problems;
      return page;
    },
    async close() {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/** Marks the document so that a later check can tell it was not reloaded. */
export async function markDocument(page) {
  await page.evaluate(() => { window.__notReloaded = true; });
}

export async function notReloaded(page) {
  return page.evaluate(() => window.__notReloaded === true);
}

export async function screenshot(page, name) {
  mkdirSync(SCREENSHOTS, { recursive: true });
  await page.screenshot({ path: join(SCREENSHOTS, `${name}.png`), fullPage: true });
}

/** True when the page needs no horizontal scrolling at its viewport width. */
export function fitsWidth(page) {
  return page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth);
}
