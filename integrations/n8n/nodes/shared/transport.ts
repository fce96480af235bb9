import type {
	IDataObject,
	IExecuteFunctions,
	IHookFunctions,
	IHttpRequestMethods,
	IHttpRequestOptions,
	ILoadOptionsFunctions,
} from 'n8n-workflow';

/** Every context the nodes call relay from (they all have credentials and helpers). */
export type RelayContext = IExecuteFunctions | ILoadOptionsFunctions | IHookFunctions;

export const CREDENTIAL = 'relayApi';

/**
 * One call to relay's API with the `relayApi` credential: the base URL comes from the
 * credential (so a workflow never types a URL) and n8n adds the Authorization header from
 * the credential's `authenticate` block (so it never types a header either).
 */
export async function relayRequest(
	this: RelayContext,
	method: IHttpRequestMethods,
	path: string,
	options: { body?: IDataObject | IDataObject[]; qs?: IDataObject; headers?: IDataObject } = {},
): Promise<any> {
	const credentials = await this.getCredentials(CREDENTIAL);
	const base = String(credentials.baseUrl ?? '').replace(/\/+$/, '');
	const request: IHttpRequestOptions = {
		method,
		url: `${base}${path}`,
		json: true,
		headers: { Accept: 'application/json', ...(options.headers ?? {}) },
	};
	if (options.body !== undefined) request.body = options.body;
	if (options.qs !== undefined) request.qs = options.qs;
	return await this.helpers.httpRequestWithAuthentication.call(this, CREDENTIAL, request);
}
