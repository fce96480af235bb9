'use strict';
/**
 * relay as a Zapier app: API-key connection to a self-hosted relay, instant
 * triggers on its REST hooks, create actions with fields from GET /v1/fields, and
 * a search. See ../../README.md "Use from Zapier".
 */
const { version: platformVersion } = require('zapier-platform-core');
const { version } = require('./package.json');
const { addBearer, apiUrl, handleErrors } = require('./src/client');
const { triggers } = require('./src/triggers');
const { creates } = require('./src/creates');
const { searches } = require('./src/searches');

const byKey = (items) => Object.fromEntries(items.map((item) => [item.key, item]));

const authentication = {
  type: 'custom',
  fields: [
    {
      key: 'base_url',
      label: 'Relay URL',
      required: true,
      type: 'string',
      helpText: 'Where your relay answers, e.g. https://relay.example.com (it must be reachable from Zapier).',
    },
    {
      key: 'api_key',
      label: 'API Key',
      required: true,
      type: 'password',
      helpText:
        'A key from `relay keys create --name zapier --scope write:leads --scope write:contacts --scope read:events --scope webhooks`.',
    },
  ],
  // GET /v1/me answers any valid key with {id, name, prefix, scopes, destinations, mode}.
  test: async (z, bundle) => (await z.request({ url: apiUrl(bundle, '/v1/me') })).data,
  // The test's answer is bundle.inputData here: the key's name and its shown prefix
  // (the first 12 characters, as relay's own lists show it; never the key).
  connectionLabel: (z, bundle) => `${bundle.inputData.name} (${bundle.inputData.prefix})`,
};

module.exports = {
  version,
  platformVersion,
  authentication,
  beforeRequest: [addBearer],
  afterResponse: [handleErrors],
  triggers: byKey(triggers),
  creates: byKey(creates),
  searches: byKey(searches),
};
