// Copies the nodes' and credential's SVG icons next to their compiled files in dist/
// (tsc copies only what it compiles; n8n loads `file:relay.svg` relative to the .js).
const fs = require('node:fs');
const path = require('node:path');

const root = path.join(__dirname, '..');
for (const dir of ['credentials', 'nodes']) {
	for (const entry of fs.readdirSync(path.join(root, dir), { recursive: true })) {
		if (!entry.endsWith('.svg')) continue;
		const to = path.join(root, 'dist', dir, entry);
		fs.mkdirSync(path.dirname(to), { recursive: true });
		fs.copyFileSync(path.join(root, dir, entry), to);
	}
}
