'use strict';
/**
 * Instant triggers on relay's REST hooks (README "Notifications (REST hooks)").
 *
 * Subscribe asks relay to POST each event of one topic to Zapier's target URL and
 * keeps relay's answer (its `id` is what unsubscribe deletes); perform passes the
 * notification through untouched; performList builds the same shape from
 * GET /v1/events so that the samples Zapier shows while a Zap is set up carry the
 * fields live notifications will have.
 */
const { apiUrl } = require('./client');

/** One sample, the shape of a notification body (an event as GET /v1/events gives
 * it, plus `event`, `test` and `destination`). */
const sampleFor = (topic, type) => ({
  id: 'evt_01M8443XD5Q3Z0N6V8W2C4B1AE',
  type,
  status: topic === 'event.failed' ? 'dead' : topic.endsWith('.delivered') ? 'delivered' : 'pending',
  mode: 'live',
  received_at: '2026-01-05T10:00:00+00:00',
  key_id: 'key_2keoExample',
  request_id: 'req_01M8443XD5Q3Z0N6V8W2C4B1AE',
  payload: {
    email: 'ivy@example.com',
    phone: '+14155550100',
    first_name: 'Ivy',
    last_name: 'Lee',
    traits: { city: 'Austin' },
  },
  destinations: [],
  event: topic,
  test: false,
  destination: topic.endsWith('.delivered') || topic === 'event.failed' ? 'crm' : null,
});

/** The destination a listed event would have been notified for: the first one in
 * the state the topic reports (relay notifies once per destination). */
const destinationFor = (topic, event) => {
  const wanted = topic === 'event.failed' ? 'dead' : topic.endsWith('.delivered') ? 'delivered' : null;
  if (!wanted) return null;
  const found = (event.destinations || []).find((d) => d.status === wanted);
  return found ? found.name : null;
};

const makeTrigger = ({ key, noun, label, description, topic, type, filters }) => {
  const subscribe = async (z, bundle) => {
    const response = await z.request({
      url: apiUrl(bundle, '/v1/hooks'),
      method: 'POST',
      body: { target_url: bundle.targetUrl, event: topic },
    });
    return response.data; // {id, event, target_url, created_at, secret}: bundle.subscribeData
  };

  const unsubscribe = async (z, bundle) => {
    const id = bundle.subscribeData && bundle.subscribeData.id;
    const response = await z.request({
      url: apiUrl(bundle, `/v1/hooks/${encodeURIComponent(id)}`),
      method: 'DELETE',
      skipThrowForStatus: true,
    });
    // 404: already gone (deleted by hand, or by relay after a 410): nothing left to undo.
    if (response.status !== 204 && response.status !== 404) {
      response.throwForStatus();
    }
    return {};
  };

  const perform = (z, bundle) => [bundle.cleanedRequest];

  const list = async (z, bundle) => {
    const response = await z.request({
      url: apiUrl(bundle, '/v1/events'),
      params: { ...filters, limit: 100 },
    });
    return response.data.map((event) => ({
      ...event,
      event: topic,
      test: event.mode === 'test',
      destination: destinationFor(topic, event),
    }));
  };

  return {
    key,
    noun,
    display: { label, description },
    operation: {
      type: 'hook',
      performSubscribe: subscribe,
      performUnsubscribe: unsubscribe,
      perform,
      performList: list,
      sample: sampleFor(topic, type || 'lead'),
    },
  };
};

const triggers = [
  makeTrigger({
    key: 'new_lead',
    noun: 'Lead',
    label: 'New Lead',
    description: 'Triggers when relay accepts a lead.',
    topic: 'lead.received',
    type: 'lead',
    filters: { type: 'lead' },
  }),
  makeTrigger({
    key: 'new_contact',
    noun: 'Contact',
    label: 'New Contact',
    description: 'Triggers when relay accepts a contact.',
    topic: 'contact.received',
    type: 'contact',
    filters: { type: 'contact' },
  }),
  makeTrigger({
    key: 'lead_delivered',
    noun: 'Lead',
    label: 'Lead Delivered',
    description: 'Triggers when a destination took a lead (once per destination).',
    topic: 'lead.delivered',
    type: 'lead',
    filters: { type: 'lead', status: 'delivered' },
  }),
  makeTrigger({
    key: 'delivery_failed',
    noun: 'Event',
    label: 'Delivery Failed',
    description: 'Triggers when a destination rejected a lead or contact for good, or its retries ran out.',
    topic: 'event.failed',
    type: 'lead',
    filters: { status: 'dead' },
  }),
];

module.exports = { triggers, destinationFor };
