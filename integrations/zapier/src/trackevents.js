'use strict';
/**
 * Track events in "Create Lead" / "Create Contact": a line-item field built from the
 * `track_events` part of GET /v1/fields (its key, label and item fields), and the
 * line items turned into the `events` list relay takes.
 *
 * Zapier's line items are flat: a child cannot be a key/value dictionary, so the
 * item's `properties` (an object in relay) is a text child holding a JSON object.
 * Zapier hands line items over as an array of objects, one per line, with "" for
 * children left unmapped; such values are left out, and a line with nothing
 * mapped at all is dropped (a Zap mapping fewer lines than it offers).
 */

/** relay's item field type -> Zapier child field type. */
const CHILD_TYPES = { string: 'string', datetime: 'datetime', object: 'text' };

/** The line-item field for `info` (GET /v1/fields' `track_events`), or null when the
 * relay is older and does not describe them. */
const trackEventsField = (info) => {
  if (!info || !Array.isArray(info.fields) || !info.fields.length) return null;
  const where = info.destinations && info.destinations.length
    ? `Tracked by ${info.destinations.join(', ')} after the contact is identified, one call each, in order.`
    : 'None of the destinations this key may use tracks them (a webhook destination gets them in its payload).';
  const children = info.fields.map((f) => {
    const child = {
      key: f.name,
      label: f.label || f.name,
      required: Boolean(f.required),
      type: CHILD_TYPES[f.type] || 'string',
    };
    if (f.type === 'object') child.helpText = 'A JSON object, e.g. {"job": "driver"}.';
    if (f.type === 'datetime') child.helpText = 'When it happened (ISO 8601 or epoch seconds); optional.';
    if (f.required) child.helpText = `Each line is one event, at most ${info.max_items}. ${where}`;
    return child;
  });
  return { key: info.name, label: info.label || info.name, required: false, children };
};

/** A JSON object written as text, parsed; anything else as given (relay's 422 then
 * names the line and the field, e.g. events.1.properties: expected an object). */
const parsedObject = (value) => {
  if (typeof value !== 'string') return value;
  try {
    const parsed = JSON.parse(value);
    return parsed && typeof parsed === 'object' && !Array.isArray(parsed) ? parsed : value;
  } catch (err) {
    return value;
  }
};

const isBlank = (value) => value === '' || value === null || value === undefined;

/** Zapier's line items as relay's `events` (null when there are none). `objectKeys`:
 * the children relay takes as objects (`properties`). */
const eventsOf = (lines, objectKeys = ['properties']) => {
  const rows = Array.isArray(lines) ? lines : lines && typeof lines === 'object' ? [lines] : [];
  const events = [];
  for (const row of rows) {
    if (!row || typeof row !== 'object') continue;
    const event = {};
    for (const [key, value] of Object.entries(row)) {
      if (isBlank(value)) continue;
      event[key] = objectKeys.includes(key) ? parsedObject(value) : value;
    }
    if (Object.keys(event).length) events.push(event);
  }
  return events.length ? events : null;
};

module.exports = { eventsOf, trackEventsField };
