import type {
	IDataObject,
	IExecuteFunctions,
	ILoadOptionsFunctions,
	INodeExecutionData,
	INodePropertyOptions,
	INodeType,
	INodeTypeDescription,
	NodeConnectionType,
} from 'n8n-workflow';

import { relayRequest } from '../shared/transport';
import { trackEventsOf, trackEventsProperty } from './trackEvents';

const MAIN = 'main' as NodeConnectionType;
const CREATE = { show: { resource: ['lead', 'contact'], operation: ['create'] } };

interface FieldsAnswer {
	fields: Array<{ name: string; label: string; type: string; aliases: string[] }>;
	require_one_of: string[];
	destinations: Array<{ name: string; type: string; events: string[] }>;
}

function eventType(resource: unknown): 'lead' | 'contact' {
	return resource === 'contact' ? 'contact' : 'lead';
}

/** What ``GET /v1/fields`` says for the type the node is set to create. */
async function fieldsFor(this: ILoadOptionsFunctions, type?: string): Promise<FieldsAnswer> {
	const kind = type ?? eventType(this.getCurrentNodeParameter('resource'));
	return (await relayRequest.call(this, 'GET', '/v1/fields', { qs: { type: kind } })) as FieldsAnswer;
}

/** Rows of a fixedCollection (``{field: [{name, value}, …]}``) as one object; empty names skipped. */
function pairs(collection: IDataObject, key: string): IDataObject {
	const out: IDataObject = {};
	for (const row of (collection[key] as IDataObject[] | undefined) ?? []) {
		const name = String(row.name ?? '').trim();
		if (name) out[name] = row.value as string;
	}
	return out;
}

function ids(text: string): string[] {
	return text
		.split(/[\s,]+/)
		.map((s) => s.trim())
		.filter(Boolean);
}

/**
 * Relay's API as an action node: create leads and contacts (fields offered from
 * ``GET /v1/fields``, track events as rows), read events, replay dead letters. One
 * request per input item.
 */
export class Relay implements INodeType {
	description: INodeTypeDescription = {
		displayName: 'Relay',
		name: 'relay',
		icon: 'file:relay.svg',
		group: ['output'],
		version: 1,
		subtitle: '={{$parameter["operation"] + ": " + $parameter["resource"]}}',
		description: 'Send leads and contacts to relay, read their delivery, replay dead letters',
		defaults: { name: 'Relay' },
		inputs: [MAIN],
		outputs: [MAIN],
		credentials: [{ name: 'relayApi', required: true }],
		properties: [
			{
				displayName: 'Resource',
				name: 'resource',
				type: 'options',
				noDataExpression: true,
				options: [
					{ name: 'Lead', value: 'lead' },
					{ name: 'Contact', value: 'contact' },
					{ name: 'Event', value: 'event' },
					{ name: 'Dead Letter', value: 'deadLetter' },
				],
				default: 'lead',
			},
			{
				displayName: 'Operation',
				name: 'operation',
				type: 'options',
				noDataExpression: true,
				displayOptions: { show: { resource: ['lead', 'contact'] } },
				options: [{ name: 'Create', value: 'create', action: 'Create', description: 'Queue it for its destinations' }],
				default: 'create',
			},
			{
				displayName: 'Operation',
				name: 'operation',
				type: 'options',
				noDataExpression: true,
				displayOptions: { show: { resource: ['event'] } },
				options: [
					{ name: 'Get', value: 'get', action: 'Get an event', description: 'One event with every delivery attempt' },
					{ name: 'Get Many', value: 'getAll', action: 'Get many events', description: 'Newest first, filtered or searched' },
				],
				default: 'get',
			},
			{
				displayName: 'Operation',
				name: 'operation',
				type: 'options',
				noDataExpression: true,
				displayOptions: { show: { resource: ['deadLetter'] } },
				options: [
					{ name: 'Replay', value: 'replay', action: 'Replay dead letters', description: 'Queue dead letters again (admin key)' },
				],
				default: 'replay',
			},
			// --- create lead / contact ---
			{
				displayName: 'Fields',
				name: 'fields',
				type: 'fixedCollection',
				typeOptions: { multipleValues: true },
				placeholder: 'Add Field',
				default: {},
				displayOptions: CREATE,
				description: 'Fields relay knows (an email or a phone is required)',
				options: [
					{
						name: 'field',
						displayName: 'Field',
						values: [
							{
								displayName: 'Name or ID',
								name: 'name',
								type: 'options',
								typeOptions: { loadOptionsMethod: 'getFields', loadOptionsDependsOn: ['resource'] },
								default: '',
								description:
									'Choose from the list, or specify an ID using an <a href="https://docs.n8n.io/code/expressions/">expression</a>',
							},
							{ displayName: 'Value', name: 'value', type: 'string', default: '' },
						],
					},
				],
			},
			{
				displayName: 'Custom Fields',
				name: 'customFields',
				type: 'fixedCollection',
				typeOptions: { multipleValues: true },
				placeholder: 'Add Custom Field',
				default: {},
				displayOptions: CREATE,
				description: 'Any other field: kept as a custom trait under its name',
				options: [
					{
						name: 'field',
						displayName: 'Custom Field',
						values: [
							{ displayName: 'Name', name: 'name', type: 'string', default: '' },
							{ displayName: 'Value', name: 'value', type: 'string', default: '' },
						],
					},
				],
			},
			trackEventsProperty(CREATE),
			{
				displayName: 'Options',
				name: 'options',
				type: 'collection',
				placeholder: 'Add Option',
				default: {},
				displayOptions: CREATE,
				options: [
					{
						displayName: 'Destination Names or IDs',
						name: 'destinations',
						type: 'multiOptions',
						typeOptions: { loadOptionsMethod: 'getDestinations', loadOptionsDependsOn: ['resource'] },
						default: [],
						description:
							'Send only to these (none: every destination this key may send the type to). Choose from the list, or specify IDs using an <a href="https://docs.n8n.io/code/expressions/">expression</a>.',
					},
					{
						displayName: 'Idempotency Key',
						name: 'idempotencyKey',
						type: 'string',
						default: '',
						description:
							'A value unique to the source record: sending it again within 24 hours returns the first answer and queues nothing',
					},
				],
			},
			// --- events ---
			{
				displayName: 'Event ID',
				name: 'eventId',
				type: 'string',
				required: true,
				default: '',
				placeholder: 'evt_01…',
				displayOptions: { show: { resource: ['event'], operation: ['get'] } },
			},
			{
				displayName: 'Limit',
				name: 'limit',
				type: 'number',
				typeOptions: { minValue: 1, maxValue: 100 },
				default: 50,
				description: 'Max number of results to return',
				displayOptions: { show: { resource: ['event'], operation: ['getAll'] } },
			},
			{
				displayName: 'Filters',
				name: 'filters',
				type: 'collection',
				placeholder: 'Add Filter',
				default: {},
				displayOptions: { show: { resource: ['event'], operation: ['getAll'] } },
				options: [
					{
						displayName: 'Search',
						name: 'q',
						type: 'string',
						default: '',
						description: "An email, a phone or an event ID: that contact's events",
					},
					{
						displayName: 'Type',
						name: 'type',
						type: 'options',
						options: [
							{ name: 'Lead', value: 'lead' },
							{ name: 'Contact', value: 'contact' },
						],
						default: 'lead',
					},
					{
						displayName: 'Status',
						name: 'status',
						type: 'options',
						options: [
							{ name: 'Dead', value: 'dead' },
							{ name: 'Delivered', value: 'delivered' },
							{ name: 'Delivering', value: 'delivering' },
							{ name: 'No Destination', value: 'no_destination' },
							{ name: 'Pending', value: 'pending' },
							{ name: 'Retrying', value: 'retrying' },
							{ name: 'Test', value: 'test' },
						],
						default: 'delivered',
					},
					{ displayName: 'Destination', name: 'destination', type: 'string', default: '' },
				],
			},
			// --- dead letters ---
			{
				displayName: 'Destination Name or ID',
				name: 'destination',
				type: 'options',
				typeOptions: { loadOptionsMethod: 'getReplayDestinations' },
				default: '',
				description:
					'Replay only at this destination (empty: every one the key may use). Choose from the list, or specify an ID using an <a href="https://docs.n8n.io/code/expressions/">expression</a>.',
				displayOptions: { show: { resource: ['deadLetter'] } },
			},
			{
				displayName: 'Replay',
				name: 'replay',
				type: 'options',
				options: [
					{ name: 'All Dead Letters', value: 'all' },
					{ name: 'These Event IDs', value: 'ids' },
				],
				default: 'ids',
				displayOptions: { show: { resource: ['deadLetter'] } },
			},
			{
				displayName: 'Event IDs',
				name: 'eventIds',
				type: 'string',
				default: '',
				required: true,
				placeholder: 'evt_01…, evt_01…',
				description: 'Comma- or space-separated',
				displayOptions: { show: { resource: ['deadLetter'], replay: ['ids'] } },
			},
		],
	};

	methods = {
		loadOptions: {
			/** The canonical fields of the type being created, each with the aliases relay takes. */
			async getFields(this: ILoadOptionsFunctions): Promise<INodePropertyOptions[]> {
				const answer = await fieldsFor.call(this);
				return answer.fields.map((f) => {
					const notes = [];
					if (answer.require_one_of.includes(f.name)) notes.push(`${answer.require_one_of.join(' or ')} is required`);
					if (f.aliases.length) notes.push(`also sent as: ${f.aliases.join(', ')}`);
					return { name: f.label, value: f.name, description: notes.join('; ') || f.type };
				});
			},
			/** Destinations this key may send the type being created to. */
			async getDestinations(this: ILoadOptionsFunctions): Promise<INodePropertyOptions[]> {
				const answer = await fieldsFor.call(this);
				return answer.destinations.map((d) => ({ name: `${d.name} (${d.type})`, value: d.name }));
			},
			/** Every destination the key may use (leads' and contacts'), for replaying dead letters. */
			async getReplayDestinations(this: ILoadOptionsFunctions): Promise<INodePropertyOptions[]> {
				const seen = new Map<string, string>();
				for (const type of ['lead', 'contact']) {
					for (const d of (await fieldsFor.call(this, type)).destinations) seen.set(d.name, d.type);
				}
				return [
					{ name: 'Every Destination', value: '' },
					...[...seen].map(([name, type]) => ({ name: `${name} (${type})`, value: name })),
				];
			},
		},
	};

	async execute(this: IExecuteFunctions): Promise<INodeExecutionData[][]> {
		const items = this.getInputData();
		const out: INodeExecutionData[] = [];
		for (let i = 0; i < items.length; i++) {
			try {
				for (const json of await runOne.call(this, i)) out.push({ json, pairedItem: { item: i } });
			} catch (error) {
				if (!this.continueOnFail()) throw error;
				out.push({ json: { error: (error as Error).message }, pairedItem: { item: i } });
			}
		}
		return [out];
	}
}

async function runOne(this: IExecuteFunctions, i: number): Promise<IDataObject[]> {
	const resource = this.getNodeParameter('resource', i) as string;
	const operation = this.getNodeParameter('operation', i) as string;
	if (operation === 'create') {
		const body: IDataObject = {
			...pairs(this.getNodeParameter('customFields', i, {}) as IDataObject, 'field'),
			...pairs(this.getNodeParameter('fields', i, {}) as IDataObject, 'field'),
		};
		const events = trackEventsOf(this.getNodeParameter('trackEvents', i, {}) as IDataObject);
		if (events) body.events = events;
		const options = this.getNodeParameter('options', i, {}) as IDataObject;
		const qs: IDataObject = {};
		const destinations = (options.destinations as string[] | undefined) ?? [];
		if (destinations.length) qs.destination = destinations.join(',');
		const headers: IDataObject = {};
		if (options.idempotencyKey) headers['Idempotency-Key'] = String(options.idempotencyKey);
		const path = resource === 'contact' ? '/v1/contacts' : '/v1/leads';
		return [await relayRequest.call(this, 'POST', path, { body, qs, headers })];
	}
	if (resource === 'event' && operation === 'get') {
		const id = String(this.getNodeParameter('eventId', i)).trim();
		return [await relayRequest.call(this, 'GET', `/v1/events/${encodeURIComponent(id)}`)];
	}
	if (resource === 'event' && operation === 'getAll') {
		const qs: IDataObject = { limit: this.getNodeParameter('limit', i, 50) as number };
		for (const [key, value] of Object.entries(this.getNodeParameter('filters', i, {}) as IDataObject)) {
			if (value !== '' && value !== undefined) qs[key] = value;
		}
		return (await relayRequest.call(this, 'GET', '/v1/events', { qs })) as IDataObject[];
	}
	if (resource === 'deadLetter' && operation === 'replay') {
		const destination = String(this.getNodeParameter('destination', i, '') ?? '');
		const body: IDataObject = { destination: destination || null };
		if (this.getNodeParameter('replay', i) === 'all') body.all = true;
		else body.event_ids = ids(String(this.getNodeParameter('eventIds', i, '')));
		return [await relayRequest.call(this, 'POST', '/v1/dead-letters/replay', { body })];
	}
	throw new Error(`Relay: unsupported operation ${operation} on ${resource}`);
}
