'use strict';
/**
 * The app run by zapier-platform-core's own app tester against a real relay
 * (test/relay.js), a local HTTP server standing in for Zapier's hook URLs and for
 * the one destination, "crm" (it answers 400 to leads whose email starts with
 * "reject", which relay dead-letters at once: a "Delivery Failed").
 */
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { after, before, describe, test } = require('node:test');
const zapier = require('zapier-platform-core');
const { validateApp } = require('zapier-platform-core/src/tools/schema');

const App = require('../index');
const { startReceiver, startRelay } = require('./relay');

const appTester = zapier.createAppTester(App);

let relay;
let receiver;
let authData;

const ALL = ['write:leads', 'write:contacts', 'read:events', 'webhooks'];

before(async () => {
  receiver = await startReceiver((hit) =>
    hit.path === '/crm' && hit.json && String(hit.json.payload && hit.json.payload.email).startsWith('reject')
      ? 400
      : 200,
  );
  relay = await startRelay({
    crmUrl: receiver.url('/crm'),
    keys: { zapier: ALL, reader: ['read:events'] },
  });
  authData = { base_url: `${relay.url}/`, api_key: relay.keys.zapier.key };
});

after(async () => {
  if (relay) await relay.stop();
  if (receiver) await receiver.close();
});

const bundleFor = (extra = {}) => ({ authData, inputData: {}, ...extra });

/** Standard Webhooks: base64 HMAC-SHA256 of "id.timestamp.body" keyed by the whsec_ secret. */
const signatureOk = (hit, secret) => {
  const key = Buffer.from(secret.slice('whsec_'.length), 'base64');
  const signed = `${hit.headers['webhook-id']}.${hit.headers['webhook-timestamp']}.${hit.raw}`;
  const expected = crypto.createHmac('sha256', key).update(signed).digest('base64');
  return hit.headers['webhook-signature'].split(' ').includes(`v1,${expected}`);
};

describe('app definition', () => {
  test('validates against zapier-platform-schema', () => {
    assert.deepEqual(validateApp(App), []);
  });

  test('the validation can fail: a trigger without a noun is refused', () => {
    const broken = { ...App, triggers: { ...App.triggers, new_lead: { ...App.triggers.new_lead, noun: undefined } } };
    assert.notDeepEqual(validateApp(broken), []);
  });
});

describe('authentication', () => {
  test('a good key passes the test, GET /v1/me', async () => {
    const me = await appTester(App.authentication.test, bundleFor());
    assert.equal(me.id, relay.keys.zapier.id);
    assert.equal(me.prefix, relay.keys.zapier.prefix);
  });

  test('the connection label is the key name and its prefix', async () => {
    const me = await appTester(App.authentication.test, bundleFor());
    const label = await appTester(App.authentication.connectionLabel, bundleFor({ inputData: me }));
    assert.equal(label, `zapier (${relay.keys.zapier.prefix})`);
  });

  test('a bad key fails with a message saying so, and without the key', async () => {
    const bad = 'rly_live_' + 'x'.repeat(32);
    await assert.rejects(
      appTester(App.authentication.test, { authData: { ...authData, api_key: bad } }),
      (err) => {
        assert.match(err.message, /relay refused the API key \(401\)/);
        assert.match(err.message, /AuthenticationError/);
        assert.ok(!err.message.includes(bad));
        return true;
      },
    );
  });

  test('a base URL that is not http(s) is a clear error', async () => {
    await assert.rejects(
      appTester(App.authentication.test, { authData: { ...authData, base_url: 'relay.example.com' } }),
      /Relay URL must start with http:\/\/ or https:\/\//,
    );
  });
});

describe('create actions', () => {
  test('lead fields come from /v1/fields, with the destinations the key may use', async () => {
    const fields = await appTester(App.creates.create_lead.operation.inputFields[0], bundleFor());
    const byKey = Object.fromEntries(fields.map((f) => [f.key, f]));
    assert.ok(byKey.email && byKey.phone && byKey.first_name, Object.keys(byKey).join(','));
    assert.equal(byKey.email.required, false);
    assert.match(byKey.email.helpText, /at least one of: email, phone/);
    assert.equal(byKey.traits.dict, true);
    assert.deepEqual(Object.keys(byKey.destination.choices), ['crm']);
    assert.equal(byKey.destination.list, true);
  });

  test('contact fields offer no destination when none takes contacts', async () => {
    const fields = await appTester(App.creates.create_contact.operation.inputFields[0], bundleFor());
    const keys = fields.map((f) => f.key);
    assert.ok(keys.includes('email'));
    assert.ok(!keys.includes('destination'));
  });

  test('create lead queues it with the mapped fields; the same run again queues nothing', async () => {
    const bundle = bundleFor({
      inputData: {
        email: 'Ann@Example.com',
        first_name: 'Ann',
        phone: '',
        traits: { city: 'Austin' },
        destination: ['crm'],
      },
      meta: { zap: { id: 'zap-1' } },
    });
    const first = await appTester(App.creates.create_lead.operation.perform, bundle);
    assert.equal(first.status, 'queued');
    assert.deepEqual(first.destinations, ['crm']);
    const again = await appTester(App.creates.create_lead.operation.perform, bundle);
    assert.equal(again.id, first.id);

    const found = await relay.api('GET', '/v1/events?q=ann@example.com', relay.keys.zapier.key);
    assert.deepEqual(found.json.map((e) => e.id), [first.id]);
    const payload = found.json[0].payload;
    assert.equal(payload.first_name, 'Ann');
    assert.equal(payload.city, 'Austin');
    // The destination choice and the Idempotency Key steer the request: not lead data.
    assert.deepEqual(payload.traits, {});

    // Another Zap sending the same data is another run: a new event.
    const other = await appTester(App.creates.create_lead.operation.perform, { ...bundle, meta: { zap: { id: 'zap-2' } } });
    assert.notEqual(other.id, first.id);
  });

  test('an Idempotency Key given by the user wins over the derived one', async () => {
    const base = { inputData: { email: 'bo@example.com', idempotency_key: 'row-7' }, meta: { zap: { id: 'zap-1' } } };
    const first = await appTester(App.creates.create_contact.operation.perform, bundleFor(base));
    const second = await appTester(
      App.creates.create_contact.operation.perform,
      bundleFor({ ...base, meta: { zap: { id: 'zap-9' } } }),
    );
    assert.equal(second.id, first.id);
  });

  test('track events: a line-item field from /v1/fields, sent as relay\'s events list', async () => {
    const fields = await appTester(App.creates.create_contact.operation.inputFields[0], bundleFor());
    const events = fields.find((f) => f.key === 'events');
    assert.ok(events, fields.map((f) => f.key).join(','));
    assert.equal(events.label, 'Track Events');
    assert.deepEqual(
      events.children.map((c) => [c.key, c.type, c.required]),
      [['event', 'string', true], ['properties', 'text', false], ['timestamp', 'datetime', false]],
    );
    // The loaded fields, put in the app as static ones, pass Zapier's schema (line items:
    // one level of children, no type, list or helpText on the parent).
    const create = App.creates.create_contact;
    const frozen = { ...create, operation: { ...create.operation, inputFields: fields } };
    assert.deepEqual(validateApp({ ...App, creates: { ...App.creates, create_contact: frozen } }), []);
    const bad = { ...frozen, operation: { ...frozen.operation, inputFields: [{ ...events, list: true }] } };
    assert.notDeepEqual(validateApp({ ...App, creates: { ...App.creates, create_contact: bad } }), []);
    // This relay's only destination is a webhook: it gets them in its payload, tracks none.
    assert.match(events.children[0].helpText, /at most 20\. None of the destinations/);

    const bundle = bundleFor({
      inputData: {
        email: 'li@example.com',
        events: [
          { event: 'applied', properties: '{"job": "driver", "shift": 2}', timestamp: '2026-01-31T12:00:00Z' },
          { event: '', properties: '', timestamp: '' }, // a line the Zap left empty
          { event: 'hired', properties: '', timestamp: '' },
        ],
      },
    });
    const made = await appTester(App.creates.create_lead.operation.perform, bundle);
    const stored = await relay.api('GET', `/v1/events/${made.id}`, relay.keys.zapier.key);
    assert.deepEqual(stored.json.payload.events, [
      { event: 'applied', properties: { job: 'driver', shift: 2 }, timestamp: '2026-01-31T12:00:00Z' },
      { event: 'hired', properties: {} },
    ]);
    assert.deepEqual(stored.json.payload.traits, {});
    const hit = await receiver.waitFor((h) => h.path === '/crm' && h.json.id === made.id);
    assert.equal(hit.json.payload.events.length, 2);

    // Properties that are not a JSON object: relay's 422 names the line and the field.
    await assert.rejects(
      appTester(
        App.creates.create_lead.operation.perform,
        bundleFor({ inputData: { email: 'li@example.com', events: [{ event: 'x', properties: 'driver' }] } }),
      ),
      /relay answered 422.*events\.0\.properties: expected an object/,
    );
    // No line mapped: no events key at all.
    const plain = await appTester(
      App.creates.create_lead.operation.perform,
      bundleFor({ inputData: { email: 'lo@example.com', events: [{ event: '' }] } }),
    );
    const got = await relay.api('GET', `/v1/events/${plain.id}`, relay.keys.zapier.key);
    assert.deepEqual(got.json.payload.events, []);
  });

  test('neither email nor phone: relay\'s own 422 message', async () => {
    await assert.rejects(
      appTester(App.creates.create_lead.operation.perform, bundleFor({ inputData: { first_name: 'Cy' } })),
      /relay answered 422.*email or a phone/,
    );
  });
});

describe('search', () => {
  test('find event by email (any case), by id, and nothing for an unknown one', async () => {
    const made = await appTester(
      App.creates.create_contact.operation.perform,
      bundleFor({ inputData: { email: 'dee@example.com' } }),
    );
    const find = (q) => appTester(App.searches.find_event.operation.perform, bundleFor({ inputData: { q } }));
    assert.deepEqual((await find('Dee@EXAMPLE.com')).map((e) => e.id), [made.id]);
    const byId = await find(made.id);
    assert.equal(byId[0].payload.email, 'dee@example.com');
    assert.deepEqual(await find('nobody@example.com'), []);
    assert.deepEqual(await find('evt_01M8443XD5Q3Z0N6V8W2C4B1AE'), []);
  });
});

describe('instant triggers', () => {
  const subscribe = (key, path) =>
    appTester(App.triggers[key].operation.performSubscribe, bundleFor({ targetUrl: receiver.url(path) }));
  const unsubscribe = (key, subscribeData) =>
    appTester(App.triggers[key].operation.performUnsubscribe, bundleFor({ subscribeData }));
  const hookIds = async () =>
    (await relay.api('GET', '/v1/hooks', relay.keys.zapier.key)).json.map((h) => h.id);

  test('New Lead: subscribe, a lead notifies the target, perform passes it on, unsubscribe', async () => {
    const sub = await subscribe('new_lead', '/zap/new_lead');
    assert.equal(sub.event, 'lead.received');
    assert.ok(sub.secret.startsWith('whsec_'));
    assert.ok((await hookIds()).includes(sub.id));

    const made = await appTester(
      App.creates.create_lead.operation.perform,
      bundleFor({ inputData: { email: 'eve@example.com' } }),
    );
    const hit = await receiver.waitFor((h) => h.path === '/zap/new_lead' && h.json.id === made.id);
    assert.equal(hit.json.event, 'lead.received');
    assert.equal(hit.json.payload.email, 'eve@example.com');
    assert.ok(signatureOk(hit, sub.secret), 'signed with the secret kept in subscribeData');

    const out = await appTester(App.triggers.new_lead.operation.perform, bundleFor({ cleanedRequest: hit.json }));
    assert.deepEqual(out, [hit.json]);

    await unsubscribe('new_lead', sub);
    assert.ok(!(await hookIds()).includes(sub.id));
    // Already gone (say, deleted in relay's console): unsubscribing again is not an error.
    await unsubscribe('new_lead', sub);
  });

  test('Lead Delivered and Delivery Failed: notified, and listed with the same fields', async () => {
    const delivered = await subscribe('lead_delivered', '/zap/delivered');
    const failed = await subscribe('delivery_failed', '/zap/failed');
    const ok = await appTester(App.creates.create_lead.operation.perform, bundleFor({ inputData: { email: 'ok@example.com' } }));
    const bad = await appTester(
      App.creates.create_lead.operation.perform,
      bundleFor({ inputData: { email: 'reject@example.com' } }),
    );
    const hitOk = await receiver.waitFor((h) => h.path === '/zap/delivered' && h.json.id === ok.id);
    assert.equal(hitOk.json.event, 'lead.delivered');
    assert.equal(hitOk.json.destination, 'crm');
    const hitBad = await receiver.waitFor((h) => h.path === '/zap/failed' && h.json.id === bad.id);
    assert.equal(hitBad.json.event, 'event.failed');
    assert.equal(hitBad.json.destination, 'crm');

    const listDelivered = await appTester(App.triggers.lead_delivered.operation.performList, bundleFor());
    const sample = listDelivered.find((e) => e.id === ok.id);
    assert.ok(sample, 'the delivered lead is listed');
    assert.ok(!listDelivered.some((e) => e.id === bad.id));
    const listFailed = await appTester(App.triggers.delivery_failed.operation.performList, bundleFor());
    assert.deepEqual(listFailed.map((e) => e.id), [bad.id]);
    // The list's items carry what a notification carries.
    for (const field of Object.keys(hitOk.json)) {
      assert.ok(field in sample, `listed events lack ${field}`);
    }
    assert.equal(sample.event, 'lead.delivered');
    assert.equal(sample.destination, 'crm');
    assert.equal(listFailed[0].destination, 'crm');

    await unsubscribe('lead_delivered', delivered);
    await unsubscribe('delivery_failed', failed);
    assert.deepEqual(await hookIds(), []);
  });

  test('New Contact lists contacts only; New Lead leads only', async () => {
    const contacts = await appTester(App.triggers.new_contact.operation.performList, bundleFor());
    assert.ok(contacts.length > 0);
    assert.ok(contacts.every((e) => e.type === 'contact' && e.event === 'contact.received'));
    const leads = await appTester(App.triggers.new_lead.operation.performList, bundleFor());
    assert.ok(leads.length > 0);
    assert.ok(leads.every((e) => e.type === 'lead'));
  });

  test('a key without the webhooks scope cannot subscribe, and is told why', async () => {
    await assert.rejects(
      appTester(App.triggers.new_lead.operation.performSubscribe, {
        authData: { ...authData, api_key: relay.keys.reader.key },
        targetUrl: receiver.url('/zap/x'),
      }),
      /relay answered 403/,
    );
  });
});
