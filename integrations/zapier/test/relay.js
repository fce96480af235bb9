'use strict';
/**
 * A real relay for the tests: `python -m relay serve` from this checkout on a free
 * 127.0.0.1 port, with its embedded Redis in a temporary directory, one webhook
 * destination and private hook targets allowed (the stand-in for Zapier listens on
 * 127.0.0.1). TEST_RELAY_PYTHON names the interpreter (.ci/run sets it; not a RELAY_*
 * name, those are relay's own settings); default: the repository's .venv.
 */
const { spawn, execFileSync } = require('child_process');
const crypto = require('crypto');
const fs = require('fs');
const http = require('http');
const os = require('os');
const path = require('path');

const ROOT = path.resolve(__dirname, '..', '..', '..');
const PYTHON = process.env.TEST_RELAY_PYTHON || path.join(ROOT, '.venv', 'bin', 'python');

/** An HTTP server on 127.0.0.1 that keeps what it is sent. `answer(req, body)` gives
 * the status to answer (default 200). */
const startReceiver = async (answer = () => 200) => {
  const received = [];
  const waiters = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const raw = Buffer.concat(chunks).toString('utf8');
      let json = null;
      try {
        json = JSON.parse(raw);
      } catch (err) {
        json = null;
      }
      const hit = { path: req.url, headers: req.headers, raw, json };
      received.push(hit);
      res.writeHead(answer(hit));
      res.end('{}');
      for (const w of waiters.splice(0)) w();
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = (p) => `http://127.0.0.1:${server.address().port}${p}`;
  /** The first request matching `pred`, waiting up to `ms` for it. */
  const waitFor = async (pred, ms = 20000) => {
    const deadline = Date.now() + ms;
    for (;;) {
      const found = received.find(pred);
      if (found) return found;
      if (Date.now() > deadline) throw new Error(`nothing matching arrived in ${ms} ms`);
      await new Promise((resolve) => {
        waiters.push(resolve);
        setTimeout(resolve, 200);
      });
    }
  };
  const close = () => new Promise((resolve) => server.close(resolve));
  return { received, url, waitFor, close };
};

const freePort = async () => {
  const server = http.createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
};

/** Start relay; `crmUrl` receives lead deliveries; `keys` maps a name to the scopes of
 * a key made (before serve starts, like an operator would) for the tests. Resolves once
 * /readyz is 200. */
const startRelay = async ({ crmUrl, keys }) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'relay-zapier-'));
  const secret = `whsec_${crypto.randomBytes(24).toString('base64')}`;
  fs.writeFileSync(
    path.join(dir, 'relay.toml'),
    [
      '[destinations.crm]',
      'type = "webhook"',
      `url = "${crmUrl}"`,
      `secret = "${secret}"`,
      'events = ["lead"]',
      'retry_schedule = [1]',
      '',
      '[hooks]',
      'allow_private_targets = true',
      '',
    ].join('\n'),
  );
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('RELAY_')));
  Object.assign(env, {
    PYTHONPATH: [ROOT, process.env.PYTHONPATH].filter(Boolean).join(path.delimiter),
    RELAY_DATA_DIR: path.join(dir, 'data'),
    RELAY_CONFIG: path.join(dir, 'relay.toml'),
  });
  const run = (...args) => execFileSync(PYTHON, ['-m', 'relay', ...args], { cwd: dir, env, encoding: 'utf8' });
  let made;
  try {
    // `relay --version` names the package it imports: this checkout's, not another.
    const version = run('--version');
    if (!version.includes(path.join(ROOT, 'relay'))) {
      throw new Error(`${PYTHON} runs ${version.trim()}, not the tree under test ${ROOT}`);
    }
    const makeKey = (name, scopes) =>
      JSON.parse(run('keys', 'create', '--name', name, ...scopes.flatMap((s) => ['--scope', s]), '--json'));
    made = Object.fromEntries(Object.entries(keys).map(([name, scopes]) => [name, makeKey(name, scopes)]));
  } catch (err) {
    fs.rmSync(dir, { recursive: true, force: true });
    throw err;
  }

  const port = await freePort();
  const log = fs.openSync(path.join(dir, 'serve.log'), 'w');
  const proc = spawn(PYTHON, ['-m', 'relay', 'serve', '--port', String(port)], {
    cwd: dir,
    env,
    stdio: ['ignore', log, log],
  });
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 30000;
  for (;;) {
    try {
      if ((await fetch(`${url}/readyz`)).status === 200) break;
    } catch (err) {
      // not listening yet
    }
    if (proc.exitCode !== null || Date.now() > deadline) {
      proc.kill('SIGTERM');
      const text = fs.readFileSync(path.join(dir, 'serve.log'), 'utf8');
      fs.closeSync(log);
      fs.rmSync(dir, { recursive: true, force: true });
      throw new Error(`relay serve did not come up:\n${text}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  /** A request straight to relay (not through the app), to check what the app did. */
  const api = async (method, p, key, body) => {
    const resp = await fetch(`${url}${p}`, {
      method,
      headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await resp.text();
    return { status: resp.status, json: text ? JSON.parse(text) : null };
  };
  const stop = async () => {
    if (proc.exitCode === null) {
      const exited = new Promise((resolve) => proc.once('exit', resolve));
      proc.kill('SIGTERM');
      await exited;
    }
    fs.closeSync(log);
    fs.rmSync(dir, { recursive: true, force: true });
  };
  return { url, keys: made, api, stop, log: () => fs.readFileSync(path.join(dir, 'serve.log'), 'utf8') };
};

module.exports = { startReceiver, startRelay };
