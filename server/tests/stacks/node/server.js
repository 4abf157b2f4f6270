// Payment-API stub on Express: express.json() bodies and qs (extended) query strings, as a Node acquirer decodes.
'use strict';
const express = require('express');
const qs = require('qs');

const STEP_UP_REQUIRED = '{"payment_transaction_response":{"result":"STEP_UP_REQUIRED"},"payment_request":{"payment_request_id":"krn:payment:eu1:request:552603c0-fe8b-4ab1-aacb-41d55fafbdb4","payment_request_reference":"acquiring-partner-request-reference-1234","amount":11800,"currency":"USD","state":"SUBMITTED","expires_at":"2025-02-26T17:25:34.534721775Z","state_context":{"customer_interaction":{"method":"HANDOVER","payment_request_id":"krn:payment:eu1:request:552603c0-fe8b-4ab1-aacb-41d55fafbdb4","payment_request_url":"https://pay.klarna.com/eu/requests/552603c0-fe8b-4ab1-aacb-41d55fafbdb4/start"}}}}';
const PAYMENT_ROUTES = ['/payments', '/v1/payments', '/v2/accounts/:id/payment/authorize'];
let records = [];

const present = (...values) =>
  values.filter((v) => v !== undefined && v !== null && v !== '').map((v) => (typeof v === 'string' ? v : JSON.stringify(v)));
const dig = (o, ...keys) => keys.reduce((v, k) => (v && typeof v === 'object' ? v[k] : undefined), o);

function record(req, route) {
  return {
    method: req.method, path: req.path, route, payment_method: null, web_urls: {}, app_urls: {},
    partner: present(req.get('X-Partner-Id')), verified: present(req.get('X-Klarna-Stepup-Verified')),
  };
}

// What the handler reads: the JSON body's fields, and req.query's (qs-decoded, nested brackets).
function urls(source, rec, prefix) {
  const cic = 'step_up_config.customer_interaction_config.';
  for (const [urls, names] of [[rec.web_urls, ['return_url', 'klarna_return_url', cic + 'return_url']],
    [rec.app_urls, ['app_return_url', 'klarna_app_return_url', cic + 'app_return_url']]]) {
    for (const name of names) {
      const [value] = present(dig(source, ...name.split('.')));
      if (value !== undefined) urls[prefix + name] = value;
    }
  }
}

const app = express();
app.set('query parser', (str) => qs.parse(str));
app.use(express.json());

app.post(PAYMENT_ROUTES, (req, res) => {
  const rec = record(req, 'payment');
  const body = req.body || {};
  rec.payment_method = body.payment_method ?? req.query.payment_method ?? null;
  urls(body, rec, '');
  urls(req.query, rec, 'query:');
  records.push(rec);
  res.type('application/json').send(STEP_UP_REQUIRED);
});

app.all('/internal/klarna/webhooks', (req, res) => {
  records.push(record(req, 'relay'));
  res.json({ received: true });
});

app.get('/__decoded', (req, res) => res.json(records));
app.delete('/__decoded', (req, res) => {
  records = [];
  res.json(records);
});

app.use((req, res) => res.status(404).json({ error: 'not found' }));

// A body express.json() cannot read: the stack answers 400 and the handler never runs.
app.use((err, req, res, next) => {
  const relay = /^\/internal\/klarna\/webhooks\/?$/i.test(req.path);
  records.push({ ...record(req, relay ? 'relay' : 'payment'), decode_error: String(err.message) });
  res.status(err.status || 400).json({ error: 'bad request' });
});

const port = Number(process.argv[2] || process.env.PORT);
app.listen(port, '127.0.0.1', () => console.log(`listening on 127.0.0.1:${port}`));
