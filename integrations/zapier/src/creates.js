'use strict';
/**
 * "Create Lead" and "Create Contact": POST /v1/leads and /v1/contacts.
 *
 * The input fields come from GET /v1/fields when the Zap editor asks for them, so
 * the app never lists a field relay does not understand and a relay that learns
 * new fields offers them without a new app version. Both need an email or a phone;
 * Names relay does not know become custom traits, so a "Custom Fields" dictionary
 * follows them. Zapier cannot express "one of two", so neither is marked required and the help
 * text says so (relay answers 422 with that message when both are missing).
 */
const crypto = require('crypto');
const { apiUrl } = require('./client');
const { eventsOf, trackEventsField } = require('./trackevents');

/** Input keys that steer the request rather than fill the lead. */
const CONTROL_KEYS = ['destination', 'idempotency_key'];
/** The line-item field of track events (GET /v1/fields' track_events.name). */
const EVENTS_KEY = 'events';

const ZAPIER_TYPES = {
  integer: 'integer',
  number: 'number',
  boolean: 'boolean',
  datetime: 'datetime',
};

/** GET /v1/fields?type=…: {type, fields, require_one_of, destinations}. */
const loadFields = async (z, bundle, type) => {
  const response = await z.request({ url: apiUrl(bundle, '/v1/fields'), params: { type } });
  return response.data;
};

/** One relay field as a Zapier input field definition. */
const toInputField = (field, requireOneOf) => {
  const def = { key: field.name, label: field.label || field.name, required: false };
  const help = [];
  if (requireOneOf.includes(field.name)) {
    help.push(`relay needs at least one of: ${requireOneOf.join(', ')}.`);
  }
  if (field.name === 'traits' || field.type === 'object') {
    def.dict = true;
    help.push('Custom fields: one row per name and value.');
  } else {
    def.type = ZAPIER_TYPES[field.type] || 'string';
  }
  if (field.aliases && field.aliases.length) {
    help.push(`relay also accepts it as ${field.aliases.join(', ')}.`);
  }
  if (help.length) def.helpText = help.join(' ');
  return def;
};

/** The dynamic part of the form: relay's fields, then the destinations this key may
 * send this type to (a multi-select; none chosen: relay's default routing). */
const dynamicFields = (type) => async (z, bundle) => {
  const doc = await loadFields(z, bundle, type);
  const requireOneOf = doc.require_one_of || [];
  const fields = doc.fields.map((f) => toInputField(f, requireOneOf));
  if (!doc.fields.some((f) => f.name === 'traits')) {
    fields.push(toInputField({ name: 'traits', label: 'Custom Fields', type: 'object' }, requireOneOf));
  }
  const tracks = trackEventsField(doc.track_events);
  if (tracks) fields.push(tracks);
  const destinations = (doc.destinations || []).filter((d) => !d.events || d.events.includes(type));
  if (destinations.length) {
    const choices = {};
    for (const d of destinations) choices[d.name] = `${d.name} (${d.type})`;
    fields.push({
      key: 'destination',
      label: 'Destinations',
      list: true,
      required: false,
      choices,
      helpText: `Send only to these; leave empty for every destination taking ${type}s that the key may use.`,
    });
  }
  return fields;
};

/** What relay receives: the mapped fields. Zapier sends an unmapped field as "";
 * relay reads that as absent too, but leaving it out keeps the request (and the
 * digest its Idempotency-Key is made of) to what the user mapped. Track events
 * (line items) become relay's `events` list (see ./trackevents.js). */
const bodyOf = (inputData) => {
  const body = {};
  for (const [key, value] of Object.entries(inputData || {})) {
    if (key === EVENTS_KEY) {
      const events = eventsOf(value);
      if (events) body[key] = events;
      continue;
    }
    if (CONTROL_KEYS.includes(key) || value === '' || value === null || value === undefined) continue;
    if (typeof value === 'object' && !Array.isArray(value) && !Object.keys(value).length) continue;
    body[key] = value;
  }
  return body;
};

/** The destinations chosen, as relay's comma-separated `destination` parameter. */
const destinationsOf = (inputData) => {
  const raw = (inputData || {}).destination;
  const names = Array.isArray(raw) ? raw : raw ? String(raw).split(',') : [];
  return names.map((n) => n.trim()).filter(Boolean);
};

/** JSON with sorted keys, so that the same input always hashes the same. */
const canonical = (value) => {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value && typeof value === 'object') {
    return `{${Object.keys(value).sort().map((k) => `${JSON.stringify(k)}:${canonical(value[k])}`).join(',')}}`;
  }
  return JSON.stringify(value);
};

/**
 * The Idempotency-Key of a run. zapier-platform-core gives an action no run id
 * (bundle.meta has only the deprecated `zap.id`, and no id of the Zap run), so the
 * key is derived from what a replay repeats exactly: the Zap's id (when Zapier
 * sends it), the action, the body and the destinations. Replaying a run (Zapier's
 * autoreplay or "Replay") within relay's 24 hours therefore gets the first answer
 * and queues nothing. The cost: the same Zap sending the very same lead twice in a
 * day queues it once; map the trigger record's own id into "Idempotency Key" to
 * tell such runs apart.
 */
const idempotencyKey = (bundle, action, body, destinations) => {
  const given = String((bundle.inputData || {}).idempotency_key || '').trim();
  if (given) return given;
  const zapId = (bundle.meta && bundle.meta.zap && bundle.meta.zap.id) || '';
  const digest = crypto
    .createHash('sha256')
    .update(canonical([String(zapId), action, body, destinations]))
    .digest('hex');
  return `zap-${digest}`;
};

const makeCreate = ({ key, noun, type, path }) => {
  const perform = async (z, bundle) => {
    const body = bodyOf(bundle.inputData);
    const destinations = destinationsOf(bundle.inputData);
    const response = await z.request({
      url: apiUrl(bundle, path),
      method: 'POST',
      params: destinations.length ? { destination: destinations.join(',') } : {},
      headers: { 'Idempotency-Key': idempotencyKey(bundle, key, body, destinations) },
      body,
    });
    return response.data; // {status: "queued", id: "evt_…", destinations: […]}
  };
  return {
    key,
    noun,
    display: {
      label: `Create ${noun}`,
      description: `Sends a ${type} to relay, which queues it for its destinations.`,
    },
    operation: {
      inputFields: [
        dynamicFields(type),
        {
          key: 'idempotency_key',
          label: 'Idempotency Key',
          required: false,
          helpText:
            'Optional: a value unique to the trigger record (its ID). Default: derived from the Zap and the data, so a replayed run queues nothing new.',
        },
      ],
      perform,
      sample: { status: 'queued', id: 'evt_01M8443XD5Q3Z0N6V8W2C4B1AE', destinations: ['crm'] },
      outputFields: [
        { key: 'id', label: 'Event ID' },
        { key: 'status', label: 'Status' },
        { key: 'destinations[]', label: 'Destinations' },
      ],
    },
  };
};

const creates = [
  makeCreate({ key: 'create_lead', noun: 'Lead', type: 'lead', path: '/v1/leads' }),
  makeCreate({ key: 'create_contact', noun: 'Contact', type: 'contact', path: '/v1/contacts' }),
];

module.exports = { creates, bodyOf, idempotencyKey, toInputField };
