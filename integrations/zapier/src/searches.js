'use strict';
/**
 * "Find Event": an event id through GET /v1/events/{id} (with every delivery
 * attempt), an email or a phone through relay's search (GET /v1/events?q=…, which
 * normalizes them as ingest does). Newest first; Zapier uses the first.
 */
const { apiUrl } = require('./client');

const findEvent = async (z, bundle) => {
  const q = String(bundle.inputData.q || '').trim();
  if (!q) return [];
  if (q.startsWith('evt_')) {
    const response = await z.request({
      url: apiUrl(bundle, `/v1/events/${encodeURIComponent(q)}`),
      skipThrowForStatus: true,
    });
    if (response.status === 404) return [];
    response.throwForStatus();
    return [response.data];
  }
  const params = { q, limit: 10 };
  if (bundle.inputData.type) params.type = bundle.inputData.type;
  const response = await z.request({ url: apiUrl(bundle, '/v1/events'), params });
  return response.data;
};

const searches = [
  {
    key: 'find_event',
    noun: 'Event',
    display: {
      label: 'Find Event',
      description: 'Finds the newest lead or contact event by email, phone or event ID.',
    },
    operation: {
      inputFields: [
        {
          key: 'q',
          label: 'Email, Phone or Event ID',
          required: true,
          helpText: 'An email (any case), a phone in any usual format, or an evt_ id.',
        },
        { key: 'type', label: 'Type', required: false, choices: { lead: 'Lead', contact: 'Contact' } },
      ],
      perform: findEvent,
      sample: {
        id: 'evt_01M8443XD5Q3Z0N6V8W2C4B1AE',
        type: 'lead',
        status: 'delivered',
        mode: 'live',
        received_at: '2026-01-05T10:00:00+00:00',
        key_id: 'key_2keoExample',
        payload: { email: 'ivy@example.com', traits: {} },
        destinations: [],
      },
    },
  },
];

module.exports = { searches };
