// A relay started from this repository for the tests, and minimal n8n contexts whose
// httpRequestWithAuthentication does real HTTP to it (authenticated exactly as the
// credential's `authenticate` block says). No n8n runtime: see README "Use from n8n".
const { spawn, execFile } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');

const { RelayApi } = require('../dist/credentials/RelayApi.credentials.js');

const REPO = path.resolve(__dirname, '..', '..', '..');

/** The repository's Python (the one with relay installed): TEST_RELAY_PYTHON or ./.venv. */
function relayPython() {
	const python = process.env.TEST_RELAY_PYTHON || path.join(REPO, '.venv', 'bin', 'python');
	if (!fs.existsSync(python)) {
		throw new Error(`no Python with relay at ${python}: make the repo's .venv or set TEST_RELAY_PYTHON`);
	}
	return python;
}

function freePort() {
	return new Promise((resolve, reject) => {
		const server = http.createServer();
		server.listen(0, '127.0.0.1', () => {
			const { port } = server.address();
			server.close(() => resolve(port));
		});
		server.on('error', reject);
	});
}

/** An HTTP server on 127.0.0.1 that keeps every request (raw body, headers) it gets. */
async function receiver(answer = () => 200) {
	const seen = [];
	const server = http.createServer((req, res) => {
		const chunks = [];
		req.on('data', (c) => chunks.push(c));
		req.on('end', () => {
			const rawBody = Buffer.concat(chunks);
			seen.push({ url: req.url, headers: req.headers, rawBody });
			res.writeHead(answer(rawBody.toString('utf8')));
			res.end();
		});
	});
	await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
	const { port } = server.address();
	return {
		url: `http://127.0.0.1:${port}`,
		seen,
		close: () => new Promise((resolve) => server.close(resolve)),
	};
}

function run(python, args, env) {
	return new Promise((resolve, reject) => {
		execFile(python, ['-m', 'relay', ...args], { env, cwd: REPO }, (error, stdout, stderr) => {
			if (error) reject(new Error(`relay ${args.join(' ')}: ${stderr || error.message}`));
			else resolve(stdout);
		});
	});
}

/**
 * `relay serve` on a free port with its own data directory (embedded Redis unless
 * RELAY_REDIS_URL is set), `toml` as relay.toml, and keys made with `relay keys create`.
 */
async function startRelay(toml, keys) {
	const python = relayPython();
	const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'n8n-relay-'));
	fs.writeFileSync(path.join(dir, 'relay.toml'), toml);
	const port = await freePort();
	const env = {
		...process.env,
		RELAY_DATA_DIR: dir,
		RELAY_CONFIG: path.join(dir, 'relay.toml'),
		RELAY_LOG_LEVEL: 'warning',
	};
	const made = {};
	for (const [name, args] of Object.entries(keys)) {
		made[name] = JSON.parse(await run(python, ['keys', 'create', '--name', name, '--json', ...args], env)).key;
	}
	const child = spawn(python, ['-m', 'relay', 'serve', '--port', String(port)], {
		env,
		cwd: REPO,
		stdio: ['ignore', 'ignore', 'pipe'],
	});
	let stderr = '';
	child.stderr.on('data', (d) => (stderr += d));
	const baseUrl = `http://127.0.0.1:${port}`;
	const stop = async () => {
		if (child.exitCode === null) {
			child.kill('SIGTERM');
			await new Promise((resolve) => child.once('exit', resolve));
		}
		fs.rmSync(dir, { recursive: true, force: true });
	};
	for (let i = 0; ; i++) {
		if (child.exitCode !== null) throw new Error(`relay serve exited: ${stderr}`);
		try {
			if ((await fetch(`${baseUrl}/readyz`)).ok) break;
		} catch {}
		if (i > 300) {
			await stop();
			throw new Error(`relay serve not ready after 30 s: ${stderr}`);
		}
		await new Promise((r) => setTimeout(r, 100));
	}
	return { baseUrl, keys: made, stop };
}

/** An n8n expression (`={{…}}`) over `$credentials`, as n8n resolves the credential's blocks. */
function resolve(value, credentials) {
	if (typeof value !== 'string' || !value.startsWith('={{')) return value;
	return new Function('$credentials', `return (${value.slice(3, -2)});`)(credentials);
}

class HttpError extends Error {
	constructor(status, body) {
		super(`Relay answered ${status}: ${typeof body === 'string' ? body : JSON.stringify(body)}`);
		this.httpCode = String(status);
		this.body = body;
	}
}

/** n8n's IHttpRequestOptions, sent with fetch; throws on non-2xx like n8n does. */
async function httpRequest(options) {
	const url = new URL(options.url);
	for (const [k, v] of Object.entries(options.qs ?? {})) url.searchParams.append(k, String(v));
	const headers = { ...(options.headers ?? {}) };
	let body;
	if (options.body !== undefined) {
		body = JSON.stringify(options.body);
		headers['Content-Type'] = 'application/json';
	}
	const res = await fetch(url, { method: options.method ?? 'GET', headers, body });
	const text = await res.text();
	const parsed = (res.headers.get('content-type') ?? '').includes('json') && text ? JSON.parse(text) : text;
	if (!res.ok) throw new HttpError(res.status, parsed);
	return parsed;
}

function helpers(credentials, calls) {
	const auth = new RelayApi().authenticate.properties;
	return {
		async httpRequestWithAuthentication(name, options) {
			if (name !== 'relayApi') throw new Error(`unknown credential ${name}`);
			const headers = { ...(options.headers ?? {}) };
			for (const [k, v] of Object.entries(auth.headers ?? {})) headers[k] = resolve(v, credentials);
			calls.push({ method: options.method, url: options.url, qs: options.qs });
			return httpRequest({ ...options, headers });
		},
	};
}

/** The parts of IExecuteFunctions / ILoadOptionsFunctions the Relay node uses. */
function executeContext(credentials, params, { items = 1, continueOnFail = false } = {}) {
	const calls = [];
	const get = (name, i, fallback) => {
		const value = (Array.isArray(params) ? params[i] : params)[name];
		return value === undefined ? fallback : value;
	};
	return {
		calls,
		getInputData: () => Array.from({ length: items }, () => ({ json: {} })),
		getNodeParameter: get,
		getCurrentNodeParameter: (name) => get(name, 0),
		getCredentials: async (name) => {
			if (name !== 'relayApi') throw new Error(`unknown credential ${name}`);
			return credentials;
		},
		continueOnFail: () => continueOnFail,
		getNode: () => ({ name: 'Relay', type: 'n8n-nodes-relay.relay' }),
		helpers: helpers(credentials, calls),
	};
}

/** The parts of IHookFunctions the trigger uses; `staticData` persists across calls. */
function hookContext(credentials, { event, webhookUrl, staticData }) {
	return {
		getWorkflowStaticData: () => staticData,
		getNodeWebhookUrl: () => webhookUrl,
		getNodeParameter: (name) => ({ event })[name],
		getCredentials: async () => credentials,
		getNode: () => ({ name: 'Relay Trigger' }),
		helpers: helpers(credentials, []),
	};
}

/** The parts of IWebhookFunctions the trigger uses, for one received request. */
function webhookContext({ staticData, headers, rawBody }) {
	const response = {
		statusCode: 200,
		body: undefined,
		status(code) {
			this.statusCode = code;
			return this;
		},
		json(body) {
			this.body = body;
			return this;
		},
	};
	return {
		response,
		getWorkflowStaticData: () => staticData,
		getRequestObject: () => ({ rawBody, headers, body: JSON.parse(rawBody.toString('utf8')) }),
		getHeaderData: () => headers,
		getResponseObject: () => response,
	};
}

/** Standard Webhooks headers for `rawBody`, signed with `secret` at `timestamp`. */
function sign(secret, rawBody, timestamp = Math.floor(Date.now() / 1000), id = 'msg_test') {
	const key = Buffer.from(secret.replace(/^whsec_/, ''), 'base64');
	const mac = crypto.createHmac('sha256', key).update(`${id}.${timestamp}.${rawBody}`).digest('base64');
	return { 'webhook-id': id, 'webhook-timestamp': String(timestamp), 'webhook-signature': `v1,${mac}` };
}

async function until(what, check, seconds = 20) {
	const deadline = Date.now() + seconds * 1000;
	for (;;) {
		const value = await check();
		if (value) return value;
		if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
		await new Promise((r) => setTimeout(r, 100));
	}
}

module.exports = {
	executeContext,
	hookContext,
	httpRequest,
	receiver,
	resolve,
	sign,
	startRelay,
	until,
	webhookContext,
};
