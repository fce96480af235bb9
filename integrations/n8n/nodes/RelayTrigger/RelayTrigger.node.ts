import type {
	IDataObject,
	IHookFunctions,
	INodeType,
	INodeTypeDescription,
	IWebhookFunctions,
	IWebhookResponseData,
	NodeConnectionType,
} from 'n8n-workflow';

import { verifySignature } from '../shared/signature';
import { relayRequest } from '../shared/transport';

/** relay's hook topics (relay/models.py HookTopic; the tests check them against /openapi.json). */
export const TOPICS = [
	{ name: 'Lead Received', value: 'lead.received', description: 'relay accepted a lead' },
	{ name: 'Contact Received', value: 'contact.received', description: 'relay accepted a contact' },
	{ name: 'Lead Delivered', value: 'lead.delivered', description: 'A destination took a lead (once per destination)' },
	{ name: 'Contact Delivered', value: 'contact.delivered', description: 'A destination took a contact (once per destination)' },
	{ name: 'Event Failed', value: 'event.failed', description: 'A destination rejected an event for good, or its retries ran out' },
];

/**
 * Starts a workflow on relay's notifications: activating the workflow subscribes this
 * node's webhook URL with ``POST /v1/hooks`` (keeping the hook's id and ``whsec_`` secret
 * in the node's static data), deactivating it unsubscribes with ``DELETE /v1/hooks/{id}``.
 * Every notification's Standard Webhooks signature is checked before the workflow runs:
 * anyone who learns the webhook URL could otherwise start it with made-up leads.
 */
export class RelayTrigger implements INodeType {
	description: INodeTypeDescription = {
		displayName: 'Relay Trigger',
		name: 'relayTrigger',
		icon: 'file:relay.svg',
		group: ['trigger'],
		version: 1,
		subtitle: '={{$parameter["event"]}}',
		description: "Starts the workflow when relay receives, delivers or gives up on a lead or contact",
		defaults: { name: 'Relay Trigger' },
		inputs: [],
		outputs: ['main' as NodeConnectionType],
		credentials: [{ name: 'relayApi', required: true }],
		webhooks: [{ name: 'default', httpMethod: 'POST', responseMode: 'onReceived', path: 'webhook' }],
		properties: [
			{
				displayName: 'Event',
				name: 'event',
				type: 'options',
				options: TOPICS,
				default: 'lead.received',
				required: true,
				description: 'What to be notified of (the relay key needs the webhooks scope)',
			},
		],
	};

	webhookMethods = {
		default: {
			/** Whether the hook kept in static data still exists at relay (it may have been
			 * deleted there, or by a 410); a stale id is forgotten so create() runs. */
			async checkExists(this: IHookFunctions): Promise<boolean> {
				const data = this.getWorkflowStaticData('node');
				if (!data.hookId) return false;
				const hooks = (await relayRequest.call(this, 'GET', '/v1/hooks')) as IDataObject[];
				const url = this.getNodeWebhookUrl('default');
				const event = this.getNodeParameter('event') as string;
				if (hooks.some((h) => h.id === data.hookId && h.target_url === url && h.event === event)) return true;
				delete data.hookId;
				delete data.hookSecret;
				return false;
			},
			async create(this: IHookFunctions): Promise<boolean> {
				const body = {
					target_url: this.getNodeWebhookUrl('default') as string,
					event: this.getNodeParameter('event') as string,
				};
				const hook = (await relayRequest.call(this, 'POST', '/v1/hooks', { body })) as IDataObject;
				if (typeof hook.id !== 'string' || typeof hook.secret !== 'string') {
					throw new Error('Relay answered POST /v1/hooks without an id and a secret');
				}
				const data = this.getWorkflowStaticData('node');
				data.hookId = hook.id;
				data.hookSecret = hook.secret;
				return true;
			},
			async delete(this: IHookFunctions): Promise<boolean> {
				const data = this.getWorkflowStaticData('node');
				if (data.hookId) {
					try {
						await relayRequest.call(this, 'DELETE', `/v1/hooks/${encodeURIComponent(String(data.hookId))}`);
					} catch (error) {
						if (statusOf(error) !== 404) return false; // already gone: fine
					}
				}
				delete data.hookId;
				delete data.hookSecret;
				return true;
			},
		},
	};

	async webhook(this: IWebhookFunctions): Promise<IWebhookResponseData> {
		const req = this.getRequestObject();
		const secret = this.getWorkflowStaticData('node').hookSecret;
		if (!req.rawBody && typeof req.readRawBody === 'function') await req.readRawBody();
		const verdict =
			typeof secret === 'string' && req.rawBody
				? verifySignature(secret, this.getHeaderData() as IDataObject, req.rawBody)
				: { ok: false as const, reason: 'not subscribed, or no body' };
		if (!verdict.ok) {
			this.getResponseObject().status(401).json({ error: `signature refused: ${verdict.reason}` });
			return { noWebhookResponse: true };
		}
		const body = JSON.parse(req.rawBody.toString('utf8')) as IDataObject;
		return { workflowData: [[{ json: body }]] };
	}
}

function statusOf(error: unknown): number | undefined {
	const e = error as { httpCode?: string | number; statusCode?: number; response?: { status?: number } };
	const code = e?.httpCode ?? e?.statusCode ?? e?.response?.status;
	return code === undefined ? undefined : Number(code);
}
