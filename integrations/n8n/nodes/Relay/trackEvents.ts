import type { IDataObject, INodeProperties } from 'n8n-workflow';

/**
 * Track events on "create lead / contact": a fixedCollection whose rows are relay's
 * ``events`` items (``{event, properties, timestamp}``, as ``GET /v1/fields`` describes
 * them under ``track_events``). relay sends each to ConveYour's track endpoint after
 * the contact's identify, in order; a webhook destination gets them in its payload.
 */

/** Most track events one item may carry (``track_events.max_items``). */
export const MAX_TRACK_EVENTS = 20;

export function trackEventsProperty(show: INodeProperties['displayOptions']): INodeProperties {
	return {
		displayName: 'Track Events',
		name: 'trackEvents',
		type: 'fixedCollection',
		typeOptions: { multipleValues: true },
		placeholder: 'Add Track Event',
		default: {},
		displayOptions: show,
		description: `Things the contact did, sent to ConveYour after its identify, one call each, in order (at most ${MAX_TRACK_EVENTS})`,
		options: [
			{
				name: 'event',
				displayName: 'Track Event',
				values: [
					{ displayName: 'Event', name: 'event', type: 'string', default: '', required: true, placeholder: 'applied' },
					{
						displayName: 'Properties',
						name: 'properties',
						type: 'json',
						default: '{}',
						description: 'A JSON object of details, e.g. {"job": "driver"}',
					},
					{
						displayName: 'Timestamp',
						name: 'timestamp',
						type: 'dateTime',
						default: '',
						description: 'When it happened (empty: none is sent)',
					},
				],
			},
		],
	};
}

/** ``properties`` as n8n gives it (JSON text, or an object from an expression), as an
 * object; text that is not a JSON object is passed on for relay's 422 to name. */
function properties(value: unknown): unknown {
	if (typeof value !== 'string') return value ?? {};
	const text = value.trim();
	if (!text) return {};
	try {
		const parsed: unknown = JSON.parse(text);
		return parsed && typeof parsed === 'object' && !Array.isArray(parsed) ? parsed : value;
	} catch {
		return value;
	}
}

/** The collection's rows as relay's ``events`` list (undefined when there are none). */
export function trackEventsOf(collection: IDataObject): IDataObject[] | undefined {
	const rows = (collection.event as IDataObject[] | undefined) ?? [];
	const events = rows.map((row) => {
		const out: IDataObject = { event: String(row.event ?? '').trim() };
		const props = properties(row.properties);
		if (!(props && typeof props === 'object' && !Object.keys(props).length)) out.properties = props as IDataObject;
		if (row.timestamp !== undefined && row.timestamp !== null && row.timestamp !== '') out.timestamp = row.timestamp as string;
		return out;
	});
	return events.length ? events : undefined;
}
