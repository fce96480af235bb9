import { createHmac, timingSafeEqual } from 'node:crypto';

/** Standard Webhooks' tolerance: a notification older or newer than this is refused. */
export const TOLERANCE_SECONDS = 5 * 60;

export type Verdict = { ok: true } | { ok: false; reason: string };

function header(headers: Record<string, unknown>, name: string): string | undefined {
	const value = headers[name] ?? headers[name.toLowerCase()];
	if (Array.isArray(value)) return typeof value[0] === 'string' ? value[0] : undefined;
	return typeof value === 'string' ? value : undefined;
}

/**
 * Checks relay's Standard Webhooks headers on a notification, as the standardwebhooks
 * libraries do: `webhook-signature` holds space-separated `v1,<base64 HMAC-SHA256>` of
 * `<webhook-id>.<webhook-timestamp>.<raw body>` keyed with the base64 after `whsec_`, and
 * the timestamp is within five minutes of now (so a captured notification cannot be
 * replayed later). Needs the raw body: re-serialized JSON would not match.
 */
export function verifySignature(
	secret: string,
	headers: Record<string, unknown>,
	rawBody: Buffer | string,
	nowSeconds: number = Math.floor(Date.now() / 1000),
): Verdict {
	const id = header(headers, 'webhook-id');
	const timestamp = header(headers, 'webhook-timestamp');
	const signatures = header(headers, 'webhook-signature');
	if (!id || !timestamp || !signatures) return { ok: false, reason: 'missing webhook headers' };
	if (!/^[0-9]{1,12}$/.test(timestamp)) return { ok: false, reason: 'bad webhook-timestamp' };
	if (Math.abs(nowSeconds - Number(timestamp)) > TOLERANCE_SECONDS) {
		return { ok: false, reason: 'webhook-timestamp outside the 5-minute tolerance' };
	}
	const key = Buffer.from(secret.startsWith('whsec_') ? secret.slice(6) : secret, 'base64');
	const body = typeof rawBody === 'string' ? Buffer.from(rawBody, 'utf8') : rawBody;
	const expected = createHmac('sha256', key)
		.update(`${id}.${timestamp}.`)
		.update(body)
		.digest();
	for (const part of signatures.split(' ')) {
		const [version, value] = part.split(',', 2);
		if (version !== 'v1' || !value) continue;
		const given = Buffer.from(value, 'base64');
		if (given.length === expected.length && timingSafeEqual(given, expected)) return { ok: true };
	}
	return { ok: false, reason: 'no valid webhook-signature' };
}
