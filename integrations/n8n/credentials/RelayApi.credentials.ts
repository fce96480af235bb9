import type {
	IAuthenticateGeneric,
	ICredentialTestRequest,
	ICredentialType,
	INodeProperties,
} from 'n8n-workflow';

/**
 * A relay API key and where relay listens. Sent as `Authorization: Bearer <key>` (relay also
 * takes X-API-Key, but a header n8n never logs is the safer default); tested with
 * `GET /v1/me`, which any valid key may call whatever its scopes.
 */
export class RelayApi implements ICredentialType {
	name = 'relayApi';
	displayName = 'Relay API';
	icon = 'file:relay.svg' as const;
	documentationUrl = 'https://github.com/relay/relay#use-from-n8n';
	properties: INodeProperties[] = [
		{
			displayName: 'API Key',
			name: 'apiKey',
			type: 'string',
			typeOptions: { password: true },
			default: '',
			required: true,
			description:
				'rly_live_… or rly_test_… (relay keys create). Scopes: write:leads / write:contacts to create, read:events to read, webhooks for the trigger, admin to replay dead letters',
		},
		{
			displayName: 'Base URL',
			name: 'baseUrl',
			type: 'string',
			default: 'http://127.0.0.1:8080',
			required: true,
			placeholder: 'https://relay.example.com',
			description: 'Where relay serves its API, without /v1',
		},
	];

	authenticate: IAuthenticateGeneric = {
		type: 'generic',
		properties: {
			headers: {
				Authorization: '={{"Bearer " + $credentials.apiKey}}',
			},
		},
	};

	test: ICredentialTestRequest = {
		request: {
			baseURL: '={{$credentials.baseUrl.replace(/\\/+$/, "")}}',
			url: '/v1/me',
			method: 'GET',
		},
	};
}
