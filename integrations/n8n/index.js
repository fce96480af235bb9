// n8n loads the files named in package.json's "n8n" section; nothing to export here.
module.exports = {};
