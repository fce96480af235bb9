'use strict';
/**
 * What every request to relay shares: where relay is (self-hosted, so the
 * connection carries its base URL), the key as a Bearer header, and relay's
 * problem+json errors turned into messages a Zap's user can act on.
 */

/** The connection's base URL without trailing slashes; refused unless http(s),
 * so that a typo fails at the connection test rather than at the first Zap run. */
const baseUrl = (bundle) => {
  const raw = String((bundle.authData && bundle.authData.base_url) || '').trim();
  if (!/^https?:\/\/[^\s/]+/i.test(raw)) {
    throw new Error('Relay URL must start with http:// or https:// (e.g. https://relay.example.com)');
  }
  return raw.replace(/\/+$/, '');
};

const apiUrl = (bundle, path) => `${baseUrl(bundle)}${path}`;

/** beforeRequest: the key goes in a header, never in the URL (URLs end up in logs). */
const addBearer = (request, z, bundle) => {
  if (bundle.authData && bundle.authData.api_key) {
    request.headers = request.headers || {};
    request.headers.Authorization = `Bearer ${bundle.authData.api_key}`;
  }
  return request;
};

/** relay's problem+json as one line: "title: detail (loc: msg; …)". Everything in it
 * comes from relay, which never puts a key into an error body. */
const describeProblem = (response) => {
  let doc = {};
  try {
    doc = JSON.parse(response.content);
  } catch (err) {
    return `relay answered ${response.status}`;
  }
  const parts = (doc.errors || []).map((e) => `${(e.loc || []).join('.')}: ${e.msg}`);
  const head = [doc.title, doc.detail].filter(Boolean).join(': ') || `relay answered ${response.status}`;
  return parts.length ? `${head} (${parts.join('; ')})` : head;
};

/** afterResponse: relay's errors as messages, 401 marked as an AuthenticationError
 * so that Zapier asks the user to reconnect (core has already turned a 429 into a
 * ThrottledError with relay's Retry-After by the time this runs). */
const handleErrors = (response, z) => {
  if (response.status < 400 || response.skipThrowForStatus) {
    return response;
  }
  const message = describeProblem(response);
  if (response.status === 401) {
    throw new z.errors.Error(
      `relay refused the API key (401): ${message}. Check the key, or make one with relay keys create.`,
      'AuthenticationError',
      401,
    );
  }
  throw new z.errors.Error(`relay answered ${response.status}: ${message}`, `relay_${response.status}`, response.status);
};

module.exports = { addBearer, apiUrl, baseUrl, describeProblem, handleErrors };
