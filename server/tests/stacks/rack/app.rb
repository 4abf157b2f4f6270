# Payment-API stub on Rack + Puma, decoding the Rails way: format suffixes routed, query parameters merged over the JSON body.
require 'json'
require 'rack'
require 'rack/handler/puma'

STEP_UP_REQUIRED = '{"payment_transaction_response":{"result":"STEP_UP_REQUIRED"},"payment_request":{"payment_request_id":"krn:payment:eu1:request:552603c0-fe8b-4ab1-aacb-41d55fafbdb4","payment_request_reference":"acquiring-partner-request-reference-1234","amount":11800,"currency":"USD","state":"SUBMITTED","expires_at":"2025-02-26T17:25:34.534721775Z","state_context":{"customer_interaction":{"method":"HANDOVER","payment_request_id":"krn:payment:eu1:request:552603c0-fe8b-4ab1-aacb-41d55fafbdb4","payment_request_url":"https://pay.klarna.com/eu/requests/552603c0-fe8b-4ab1-aacb-41d55fafbdb4/start"}}}}'.freeze
# Rails routes: `post '/payments(.:format)'` and the like (a format is `[^/.?]+`).
PAYMENT_ROUTES = [%r{\A/(?:v1/)?payments(?:\.[^/.?]+)?\z}, %r{\A/v2/accounts/[^/.?]+/payment/authorize(?:\.[^/.?]+)?\z}].freeze
RELAY_ROUTE = %r{\A/internal/klarna/webhooks(?:\.[^/.?]+)?\z}.freeze
RECORDS = []
LOCK = Mutex.new

# ActionDispatch::Journey::Router::Utils.normalize_path
def normalize_path(path)
  path = "/#{path}".squeeze('/').sub(%r{/+\z}, '').gsub(/(%[a-f0-9]{2})/) { $1.upcase }
  path.empty? ? '/' : path
end

# ActionDispatch::Http::Parameters#parameters: request_parameters.merge(query_parameters)
def params(req)
  body = req.body.read
  request_params =
    if req.media_type.to_s.include?('json')
      parsed = body.empty? ? {} : JSON.parse(body)
      parsed.is_a?(Hash) ? parsed : { '_json' => parsed }
    else
      req.POST
    end
  request_params.merge(Rack::Utils.parse_nested_query(req.query_string))
end

def dig(h, *keys)
  keys.reduce(h) { |v, k| v.is_a?(Hash) ? v[k] : nil }
end

def fields(**values)
  values.transform_keys(&:to_s).transform_values { |v| present(v).first }.compact
end

def present(*values)
  values.compact.map { |v| v.is_a?(String) ? v : v.to_json }.reject(&:empty?)
end

def record(env, path, route)
  { 'method' => env['REQUEST_METHOD'], 'path' => path, 'route' => route, 'payment_method' => nil,
    'web_urls' => {}, 'app_urls' => {},
    'partner' => present(env['HTTP_X_PARTNER_ID']), 'verified' => present(env['HTTP_X_KLARNA_STEPUP_VERIFIED']) }
end

def keep(rec)
  LOCK.synchronize { RECORDS << rec }
end

def json(status, body)
  [status, { 'content-type' => 'application/json' }, [body]]
end

APP = lambda do |env|
  req = Rack::Request.new(env)
  path = normalize_path(req.path_info)
  if path == '/__decoded'
    LOCK.synchronize { RECORDS.clear } if req.delete?
    next json(200, LOCK.synchronize { RECORDS.to_json })
  end
  if RELAY_ROUTE.match?(path)
    keep(record(env, path, 'relay'))
    next json(200, '{"received":true}')
  end
  next json(404, '{"error":"not found"}') unless req.post? && PAYMENT_ROUTES.any? { |r| r.match?(path) }

  rec = record(env, path, 'payment')
  begin
    p = params(req)
  rescue JSON::ParserError, Rack::Utils::ParameterTypeError, Rack::Utils::InvalidParameterError => e
    keep(rec.merge('decode_error' => e.message))
    next json(400, '{"error":"bad request"}')
  end
  cic = dig(p, 'step_up_config', 'customer_interaction_config')
  rec['payment_method'] = p['payment_method']
  rec['web_urls'] = fields(return_url: p['return_url'], klarna_return_url: p['klarna_return_url'],
                           'step_up_config.customer_interaction_config.return_url': dig(cic, 'return_url'))
  rec['app_urls'] = fields(app_return_url: p['app_return_url'], klarna_app_return_url: p['klarna_app_return_url'],
                           'step_up_config.customer_interaction_config.app_return_url': dig(cic, 'app_return_url'))
  keep(rec)
  json(200, STEP_UP_REQUIRED)
end

port = Integer(ARGV[0] || ENV.fetch('PORT'))
Rack::Handler::Puma.run(APP, Host: '127.0.0.1', Port: port, Threads: '1:4', Silent: true) do |launcher|
  launcher.events.on_booted { puts "listening on 127.0.0.1:#{port}"; $stdout.flush }
end
