// The nodes against a relay this test starts (python -m relay serve from this tree).
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { after, before, test } = require('node:test');

const { RelayApi } = require('../dist/credentials/RelayApi.credentials.js');
const { Relay } = require('../dist/nodes/Relay/Relay.node.js');
const { RelayTrigger, TOPICS } = require('../dist/nodes/RelayTrigger/RelayTrigger.node.js');
const pkg = require('../package.json');
const h = require('./harness');

let relay, sink, hooks, full, restricted;
const WHSEC = `whsec_${crypto.randomBytes(24).toString('base64')}`;

before(async () => {
	// The sink refuses (400: dead-lettered at once) any lead whose body mentions "reject".
	sink = await h.receiver((body) => (body.includes('reject') ? 400 : 200));
	hooks = await h.receiver();
	const toml = `
[destinations.sink]
type = "webhook"
url = "${sink.url}/in"
secret = "${WHSEC}"
events = ["lead", "contact"]

[destinations.other]
type = "webhook"
url = "${sink.url}/other"
secret = "${WHSEC}"
events = ["lead"]

[hooks]
allow_private_targets = true
`;
	const scopes = ['write:leads', 'write:contacts', 'read:events', 'webhooks', 'admin'];
	relay = await h.startRelay(toml, {
		full: scopes.flatMap((s) => ['--scope', s]),
		restricted: ['--scope', 'write:leads', '--destination', 'other'],
	});
	full = { apiKey: relay.keys.full, baseUrl: `${relay.baseUrl}/` }; // a trailing / is fine
	restricted = { apiKey: relay.keys.restricted, baseUrl: relay.baseUrl };
});

after(async () => {
	await relay?.stop();
	await sink?.close();
	await hooks?.close();
});

const node = new Relay();
const trigger = new RelayTrigger();

async function execute(params, credentials = full) {
	const ctx = h.executeContext(credentials, params);
	const [out] = await node.execute.call(ctx);
	return out.map((item) => item.json);
}

test('package.json names the built credential and nodes', () => {
	const fs = require('node:fs');
	const path = require('node:path');
	for (const file of [...pkg.n8n.credentials, ...pkg.n8n.nodes]) {
		assert.ok(fs.existsSync(path.join(__dirname, '..', file)), file);
	}
	assert.equal(pkg.name, 'n8n-nodes-relay');
	assert.ok(pkg.keywords.includes('n8n-community-node-package'));
});

test("credential test request is GET /v1/me with the credential's header", async () => {
	const cred = new RelayApi();
	const request = cred.test.request;
	const base = h.resolve(request.baseURL, full);
	const headers = { Authorization: h.resolve(cred.authenticate.properties.headers.Authorization, full) };
	const me = await h.httpRequest({ method: request.method, url: `${base}${request.url}`, headers });
	assert.equal(me.name, 'full');
	await assert.rejects(
		h.httpRequest({ url: `${base}${request.url}`, headers: { Authorization: 'Bearer rly_live_nope' } }),
		/401/,
	);
});

test('loadOptions offer /v1/fields: every field, the key\'s destinations', async () => {
	const fields = await h.httpRequest({
		url: `${relay.baseUrl}/v1/fields?type=contact`,
		headers: { Authorization: `Bearer ${full.apiKey}` },
	});
	const ctx = h.executeContext(full, { resource: 'contact' });
	const options = await node.methods.loadOptions.getFields.call(ctx);
	assert.deepEqual(
		options.map((o) => o.value),
		fields.fields.map((f) => f.name),
	);
	const phone = options.find((o) => o.value === 'phone');
	assert.match(phone.description, /mobile/);
	assert.match(phone.description, /email or phone is required/);
	assert.deepEqual(ctx.calls, [{ method: 'GET', url: `${relay.baseUrl}/v1/fields`, qs: { type: 'contact' } }]);

	const leadDests = await node.methods.loadOptions.getDestinations.call(h.executeContext(full, { resource: 'lead' }));
	assert.deepEqual(leadDests.map((o) => o.value), ['sink', 'other']);
	const contactDests = await node.methods.loadOptions.getDestinations.call(h.executeContext(full, { resource: 'contact' }));
	assert.deepEqual(contactDests.map((o) => o.value), ['sink']);
	const mine = await node.methods.loadOptions.getDestinations.call(h.executeContext(restricted, { resource: 'lead' }));
	assert.deepEqual(mine.map((o) => o.value), ['other']);
	const replay = await node.methods.loadOptions.getReplayDestinations.call(h.executeContext(full, {}));
	assert.deepEqual(replay.map((o) => o.value), ['', 'sink', 'other']);
});

test('create lead (fields, custom fields, destination, Idempotency-Key), get it, find it', async () => {
	const params = {
		resource: 'lead',
		operation: 'create',
		fields: {
			field: [
				{ name: 'email', value: 'Ann@Example.COM' },
				{ name: 'phone', value: '+44 7123 456789' },
				{ name: 'first_name', value: 'Ann' },
			],
		},
		customFields: { field: [{ name: 'favourite colour', value: 'teal' }] },
		options: { destinations: ['sink'], idempotencyKey: `n8n-${crypto.randomUUID()}` },
	};
	const [queued] = await execute(params);
	assert.equal(queued.status, 'queued');
	assert.deepEqual(queued.destinations, ['sink']);
	const [again] = await execute(params);
	assert.equal(again.id, queued.id, 'the same Idempotency-Key gets the first answer');

	const [event] = await execute({ resource: 'event', operation: 'get', eventId: queued.id });
	assert.equal(event.type, 'lead');
	assert.equal(event.payload.email, 'ann@example.com');
	assert.equal(event.payload.phone, '+447123456789');
	assert.equal(event.payload.first_name, 'Ann');
	assert.deepEqual(event.payload.traits, { 'favourite colour': 'teal' });

	const found = await execute({
		resource: 'event',
		operation: 'getAll',
		limit: 10,
		filters: { q: 'ann@example.com', type: 'lead' },
	});
	assert.deepEqual(found.map((e) => e.id), [queued.id]);
	const none = await execute({ resource: 'event', operation: 'getAll', limit: 10, filters: { type: 'contact', q: 'ann@example.com' } });
	assert.deepEqual(none, []);
});

test('create contact; a restricted key naming another destination is refused', async () => {
	const [queued] = await execute({
		resource: 'contact',
		operation: 'create',
		fields: { field: [{ name: 'email', value: 'cy@example.com' }] },
	});
	assert.deepEqual(queued.destinations, ['sink']);
	await assert.rejects(
		execute(
			{
				resource: 'lead',
				operation: 'create',
				fields: { field: [{ name: 'email', value: 'x@example.com' }] },
				options: { destinations: ['sink'] },
			},
			restricted,
		),
		/403/,
	);
	await assert.rejects(
		execute({ resource: 'lead', operation: 'create', fields: { field: [{ name: 'first_name', value: 'No' }] } }),
		/422.*email or a phone/,
	);
});

test('create contact with track events: rows become relay\'s events list, as /v1/fields describes it', async () => {
	const fields = await h.httpRequest({
		url: `${relay.baseUrl}/v1/fields?type=contact`,
		headers: { Authorization: `Bearer ${full.apiKey}` },
	});
	const prop = node.description.properties.find((p) => p.name === 'trackEvents');
	assert.equal(prop.type, 'fixedCollection');
	assert.deepEqual(prop.displayOptions, { show: { resource: ['lead', 'contact'], operation: ['create'] } });
	const row = prop.options[0].values;
	assert.deepEqual(row.map((v) => v.name), fields.track_events.fields.map((f) => f.name));
	assert.deepEqual(row.filter((v) => v.required).map((v) => v.name), ['event']);
	assert.match(prop.description, new RegExp(`at most ${fields.track_events.max_items}\\)`));

	const [queued] = await execute({
		resource: 'contact',
		operation: 'create',
		fields: { field: [{ name: 'email', value: 'tr@example.com' }] },
		trackEvents: {
			event: [
				{ event: 'applied', properties: '{"job": "driver"}', timestamp: '2026-01-31T12:00:00' },
				{ event: 'interviewed', properties: { round: 2 }, timestamp: '' }, // an expression's object
				{ event: 'hired', properties: '{}' },
			],
		},
	});
	const [event] = await execute({ resource: 'event', operation: 'get', eventId: queued.id });
	assert.deepEqual(event.payload.events, [
		{ event: 'applied', properties: { job: 'driver' }, timestamp: '2026-01-31T12:00:00' },
		{ event: 'interviewed', properties: { round: 2 } },
		{ event: 'hired', properties: {} },
	]);
	assert.deepEqual(event.payload.traits, {});
	const hit = await h.until('the sink to get it', () => sink.seen.find((s) => s.rawBody.includes(queued.id)));
	assert.equal(JSON.parse(hit.rawBody).payload.events.length, 3);

	const bad = (events) =>
		execute({ resource: 'contact', operation: 'create', fields: { field: [{ name: 'email', value: 'tr@example.com' }] }, trackEvents: { event: events } });
	await assert.rejects(bad([{ event: 'x', properties: 'driver' }]), /422.*events\.0\.properties: expected an object/);
	await assert.rejects(bad([{ event: 'x' }, { event: ' ' }]), /422.*events\.1\.event/);
	const [plain] = await execute({ resource: 'contact', operation: 'create', fields: { field: [{ name: 'email', value: 'tp@example.com' }] }, trackEvents: {} });
	const [stored] = await execute({ resource: 'event', operation: 'get', eventId: plain.id });
	assert.deepEqual(stored.payload.events, []);
});

test('replay dead letters by id and all', async () => {
	const [queued] = await execute({
		resource: 'lead',
		operation: 'create',
		fields: { field: [{ name: 'email', value: 'reject-me@example.com' }] },
		options: { destinations: ['sink'] },
	});
	await h.until('the lead to be dead-lettered', async () => {
		const [event] = await execute({ resource: 'event', operation: 'get', eventId: queued.id });
		return event.status === 'dead';
	});
	const [byId] = await execute({
		resource: 'deadLetter',
		operation: 'replay',
		destination: 'sink',
		replay: 'ids',
		eventIds: `${queued.id}, evt_01JD6Q9W5S3ZK8M2R4T7V9XB1C`,
	});
	assert.deepEqual(byId, { replayed: 1 });
	await h.until('the replayed lead to die again', async () => {
		const [event] = await execute({ resource: 'event', operation: 'get', eventId: queued.id });
		return event.status === 'dead';
	});
	const [all] = await execute({ resource: 'deadLetter', operation: 'replay', destination: '', replay: 'all' });
	assert.deepEqual(all, { replayed: 1 });
});

test('trigger topics are relay\'s hook topics', async () => {
	const doc = await h.httpRequest({ url: `${relay.baseUrl}/openapi.json` });
	const topics = doc.components.schemas.HookCreate.properties.event.enum;
	assert.deepEqual(TOPICS.map((t) => t.value).sort(), [...topics].sort());
});

test('trigger subscribes, verifies a real notification, refuses tampered ones, unsubscribes', async () => {
	const staticData = {};
	const webhookUrl = `${hooks.url}/webhook/${crypto.randomUUID()}/webhook`;
	const hook = () => h.hookContext(full, { event: 'lead.received', webhookUrl, staticData });
	const methods = trigger.webhookMethods.default;

	assert.equal(await methods.checkExists.call(hook()), false);
	assert.equal(await methods.create.call(hook()), true);
	assert.match(staticData.hookId, /^hook_/);
	assert.match(staticData.hookSecret, /^whsec_/);
	assert.equal(await methods.checkExists.call(hook()), true);

	const [queued] = await execute({
		resource: 'lead',
		operation: 'create',
		fields: { field: [{ name: 'email', value: 'hooked@example.com' }] },
	});
	const got = await h.until('the notification', () =>
		hooks.seen.find((r) => JSON.parse(r.rawBody.toString()).id === queued.id),
	);
	assert.ok(got.url.startsWith(new URL(webhookUrl).pathname));

	const ok = h.webhookContext({ staticData, headers: got.headers, rawBody: got.rawBody });
	const result = await trigger.webhook.call(ok);
	assert.equal(result.workflowData[0][0].json.id, queued.id);
	assert.equal(result.workflowData[0][0].json.event, 'lead.received');
	assert.equal(result.workflowData[0][0].json.payload.email, 'hooked@example.com');

	const refused = async (headers, rawBody) => {
		const ctx = h.webhookContext({ staticData, headers, rawBody });
		const answer = await trigger.webhook.call(ctx);
		assert.equal(answer.workflowData, undefined);
		assert.equal(answer.noWebhookResponse, true);
		assert.equal(ctx.response.statusCode, 401);
		return ctx.response.body.error;
	};
	const tampered = Buffer.from(got.rawBody.toString().replace('hooked@example.com', 'evil@example.com'));
	assert.match(await refused(got.headers, tampered), /no valid webhook-signature/);
	assert.match(await refused({ ...got.headers, 'webhook-id': 'ntf_other' }, got.rawBody), /no valid/);
	const { 'webhook-signature': _, ...unsigned } = got.headers;
	assert.match(await refused(unsigned, got.rawBody), /missing/);
	const body = got.rawBody.toString();
	const stale = h.sign(staticData.hookSecret, body, Math.floor(Date.now() / 1000) - 301);
	assert.match(await refused(stale, got.rawBody), /tolerance/);
	const fresh = h.sign(staticData.hookSecret, body, Math.floor(Date.now() / 1000) - 290);
	assert.ok((await trigger.webhook.call(h.webhookContext({ staticData, headers: fresh, rawBody: got.rawBody }))).workflowData);
	const otherSecret = h.sign(WHSEC, body);
	assert.match(await refused(otherSecret, got.rawBody), /no valid/);

	const id = staticData.hookId;
	assert.equal(await methods.delete.call(hook()), true);
	assert.equal(staticData.hookId, undefined);
	const listed = await h.httpRequest({ url: `${relay.baseUrl}/v1/hooks`, headers: { Authorization: `Bearer ${full.apiKey}` } });
	assert.ok(!listed.some((x) => x.id === id));
	assert.equal(await methods.checkExists.call(hook()), false);
	// Deleting a hook relay no longer has (404) still succeeds.
	staticData.hookId = id;
	assert.equal(await methods.delete.call(hook()), true);
	// Without a subscription nothing is accepted.
	assert.match(await refused(got.headers, got.rawBody), /not subscribed/);
});
