// The nodes inside n8n's own execution contexts (n8n-core's ExecuteContext, LoadOptionsContext,
// HookContext, WebhookContext: n8n's getNodeParameter with the editor's defaults, static data,
// webhook URLs, and httpRequestWithAuthentication over axios with NodeApiError on failure),
// against a relay this test starts. Only the credentials store is stood in for: it hands out
// the credential and applies its `authenticate` block with n8n's expression engine, as n8n's
// CredentialsHelper does.
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { after, before, test } = require('node:test');

// n8n-core keeps an instance settings file in the user folder: not the real ~/.n8n.
const userFolder = fs.mkdtempSync(path.join(os.tmpdir(), 'n8n-user-'));
process.env.N8N_USER_FOLDER = userFolder;
process.env.N8N_ENFORCE_SETTINGS_FILE_PERMISSIONS = 'false';

const { NodeHelpers, Workflow } = require('n8n-workflow');
const { ExecuteContext, HookContext, LoadOptionsContext, PackageDirectoryLoader, WebhookContext } = require('n8n-core');
const h = require('./harness');

const ROOT = path.join(__dirname, '..');
let relay, hooks, loader, credentials;

before(async () => {
	hooks = await h.receiver();
	relay = await h.startRelay('[hooks]\nallow_private_targets = true\n', {
		core: ['write:leads', 'read:events', 'webhooks'].flatMap((s) => ['--scope', s]),
	});
	credentials = { apiKey: relay.keys.core, baseUrl: relay.baseUrl };
	loader = new PackageDirectoryLoader(ROOT);
	await loader.loadAll();
});

after(async () => {
	await relay?.stop();
	await hooks?.close();
	fs.rmSync(userFolder, { recursive: true, force: true });
});

const nodeTypes = {
	getByName: (type) => loader.nodeTypes[type.split('.').pop()].type,
	getByNameAndVersion: (type) => loader.nodeTypes[type.split('.').pop()].type,
	getKnownTypes: () => ({}),
};

function makeNode(name, short, params) {
	const desc = nodeTypes.getByName(short).description;
	return {
		id: name,
		name,
		type: `n8n-nodes-relay.${short}`,
		typeVersion: 1,
		position: [0, 0],
		parameters: NodeHelpers.getNodeParameters(desc.properties, params, true, false, null, desc),
		credentials: { relayApi: { id: 'c1', name: 'relay' } },
		webhookId: 'wh1',
	};
}

function additionalData(extra = {}) {
	const cred = loader.credentialTypes.relayApi.type; // an instance, as n8n keeps it
	return {
		credentialsHelper: {
			getDecrypted: async () => credentials,
			getParentTypes: () => [],
			preAuthentication: async () => undefined,
			authenticate: async (creds, _type, options, workflow, node) => {
				const resolve = (v) =>
					workflow.expression.getSimpleParameterValue(node, v, 'internal', { $credentials: creds }, undefined, '');
				options.headers = { ...(options.headers ?? {}) };
				for (const [k, v] of Object.entries(cred.authenticate.properties.headers)) options.headers[k] = resolve(v);
				return options;
			},
		},
		webhookBaseUrl: `${hooks.url}/webhook`,
		webhookTestBaseUrl: `${hooks.url}/webhook-test`,
		webhookWaitingBaseUrl: `${hooks.url}/webhook-waiting`,
		formWaitingBaseUrl: `${hooks.url}/form-waiting`,
		instanceBaseUrl: hooks.url,
		restApiUrl: `${hooks.url}/rest`,
		variables: {},
		executionId: 'exec1',
		...extra,
	};
}

async function execute(params) {
	const node = makeNode('Relay', 'relay', params);
	const workflow = new Workflow({ id: 'w1', nodes: [node], connections: {}, active: false, nodeTypes });
	const input = { main: [[{ json: {} }]] };
	const runData = {
		resultData: { runData: {} },
		executionData: { contextData: {}, nodeExecutionStack: [], waitingExecution: {}, waitingExecutionSource: {} },
	};
	const ctx = new ExecuteContext(workflow, node, additionalData(), 'manual', runData, 0, [{ json: {} }], input,
		{ node, data: input, source: null }, []);
	const [out] = await nodeTypes.getByName('relay').execute.call(ctx);
	return out.map((item) => item.json);
}

test("n8n's loader finds the credential, both nodes and their icons", () => {
	assert.deepEqual(Object.keys(loader.nodeTypes).sort(), ['relay', 'relayTrigger']);
	assert.deepEqual(Object.keys(loader.credentialTypes), ['relayApi']);
	for (const n of loader.types.nodes) assert.match(n.iconUrl, /^icons\/n8n-nodes-relay\/dist\/nodes\/.*relay\.svg$/);
});

test('Relay node in ExecuteContext and LoadOptionsContext', async () => {
	const node = makeNode('Relay', 'relay', { resource: 'contact' });
	const workflow = new Workflow({ id: 'w1', nodes: [node], connections: {}, active: false, nodeTypes });
	const lo = new LoadOptionsContext(workflow, node, additionalData(), 'parameters.fields');
	const fields = await nodeTypes.getByName('relay').methods.loadOptions.getFields.call(lo);
	assert.equal(fields[0].value, 'email');
	assert.ok(fields.some((f) => f.value === 'postcode' && /zip/.test(f.description)));

	const [queued] = await execute({
		resource: 'lead',
		operation: 'create',
		fields: { field: [{ name: 'email', value: 'Core@N8n.example' }, { name: 'phone', value: '+44 7123 456789' }] },
		customFields: { field: [{ name: 'source', value: 'n8n-core' }] },
		options: { idempotencyKey: 'n8n-core-1' },
	});
	assert.equal(queued.status, 'queued');
	const [event] = await execute({ resource: 'event', operation: 'get', eventId: queued.id });
	assert.equal(event.payload.email, 'core@n8n.example');
	assert.equal(event.payload.phone, '+447123456789');
	assert.deepEqual(event.payload.traits, { source: 'n8n-core' });
	const found = await execute({ resource: 'event', operation: 'getAll', limit: 5, filters: { q: 'core@n8n.example' } });
	assert.deepEqual(event.payload.events, []); // no rows: no events key sent

	// Track events through n8n's own parameter handling (the rows' defaults filled in).
	const [tracked] = await execute({
		resource: 'lead',
		operation: 'create',
		fields: { field: [{ name: 'email', value: 'track@n8n.example' }] },
		trackEvents: { event: [{ event: 'applied', properties: '{"job": "driver"}' }, { event: 'hired' }] },
	});
	const [withEvents] = await execute({ resource: 'event', operation: 'get', eventId: tracked.id });
	assert.deepEqual(withEvents.payload.events, [
		{ event: 'applied', properties: { job: 'driver' } },
		{ event: 'hired', properties: {} },
	]);
	assert.deepEqual(found.map((e) => e.id), [queued.id]);
	await assert.rejects(execute({ resource: 'event', operation: 'get', eventId: 'evt_nope' }), (e) => {
		assert.equal(e.constructor.name, 'NodeApiError');
		assert.equal(String(e.httpCode), '404');
		return true;
	});
});

test('Relay Trigger in HookContext and WebhookContext', async () => {
	const tnode = makeNode('Relay Trigger', 'relayTrigger', { event: 'lead.received' });
	const workflow = new Workflow({ id: 'w2', nodes: [tnode], connections: {}, active: true, nodeTypes, staticData: {} });
	const trigger = nodeTypes.getByName('relayTrigger');
	const webhookData = {
		httpMethod: 'POST',
		node: tnode.name,
		path: 'wh1/webhook',
		webhookDescription: trigger.description.webhooks[0],
		workflowId: 'w2',
		webhookId: 'wh1',
	};
	const hook = () => new HookContext(workflow, tnode, additionalData(), 'trigger', 'activate', webhookData);
	const m = trigger.webhookMethods.default;
	assert.equal(await m.checkExists.call(hook()), false);
	assert.equal(await m.create.call(hook()), true);
	assert.equal(await m.checkExists.call(hook()), true);

	const [lead] = await execute({ resource: 'lead', operation: 'create', fields: { field: [{ name: 'email', value: 'hook@n8n.example' }] } });
	const got = await h.until('the notification', () => hooks.seen.find((s) => s.rawBody.includes(lead.id)));
	assert.equal(got.url, '/webhook/wh1/webhook');
	const webhook = async (rawBody) => {
		const res = { statusCode: 200, status(c) { this.statusCode = c; return this; }, json(b) { this.body = b; return this; } };
		const data = additionalData({ httpRequest: { headers: got.headers, rawBody, body: {} }, httpResponse: res });
		const out = await trigger.webhook.call(new WebhookContext(workflow, tnode, data, 'trigger', webhookData, [], null));
		return { status: res.statusCode, out };
	};
	const ok = await webhook(got.rawBody);
	assert.equal(ok.status, 200);
	assert.equal(ok.out.workflowData[0][0].json.id, lead.id);
	const bad = await webhook(Buffer.from(got.rawBody.toString().replace('hook@', 'evil@')));
	assert.equal(bad.status, 401);
	assert.equal(bad.out.workflowData, undefined);

	assert.equal(await m.delete.call(hook()), true);
	assert.equal(await m.checkExists.call(hook()), false);
});
