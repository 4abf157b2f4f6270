//! Judging a request from its head alone: pass through, a candidate route whose body is read,
//! one refused from its head, or one of the layer's own routes.

use http::header::HeaderValue;
use http::{HeaderMap, Method, Uri};

use super::{head, partners, reference, routes, Exchange, Refusal, StepUp};

/// What a request is, judged from its head alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Route {
    /// Not ours: stream it through untouched.
    PassThrough,
    /// A candidate route: read the body (within the limit) and ask
    /// [`StepUp::rewrite_request`].
    Candidate(Candidate),
    /// The acquirer return endpoint: answer [`StepUp::resolve_return`] (no body to read).
    Return,
    /// Klarna's webhook: read the body (within [`StepUp::webhook_body_limit`]), ask
    /// [`StepUp::verify_webhook`], relay to [`StepUp::webhook_relay_path`].
    Webhook,
    /// The payment API's webhook relay path (in any spelling a router may take for it),
    /// reached from outside: answer [`Refusal::not_found`], so only verified webhooks get
    /// there.
    RelayPathFromOutside,
    /// A candidate route refused from its head alone: answer [`HeadRefusal::refusal`] at
    /// once, read no body, send nothing upstream.
    Refused(HeadRefusal),
}

/// Why a request on a candidate route is refused from its head: see [`StepUp::classify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadRefusal {
    pub(super) candidate: Candidate,
    pub(super) reason: HeadReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeadReason {
    NonCanonicalPath,
    QueryField,
    MediaType,
    ContentEncoding,
    /// `Connection` lists a header the layer reads to decide (`Content-Type`, the
    /// idempotency key's): the payment API would not get what the layer read.
    HopByHopRead,
}

impl HeadRefusal {
    /// The candidate route the request (canonically) names, for logs and metrics
    /// ([`StepUp::candidate_pattern`]).
    pub fn candidate(self) -> Candidate {
        self.candidate
    }

    /// The answer: 400 `non_canonical_path`, 400 `query_field`, 400 `bad_request_head`, 415
    /// `unsupported_media_type` or 415 `unsupported_content_encoding`.
    pub fn refusal(self) -> Refusal {
        match self.reason {
            HeadReason::NonCanonicalPath => Refusal::non_canonical_path(),
            HeadReason::QueryField => Refusal::query_field(),
            HeadReason::MediaType => Refusal::unsupported_media_type(),
            HeadReason::ContentEncoding => Refusal::unsupported_content_encoding(),
            HeadReason::HopByHopRead => Refusal::bad_request_head(
                "Connection",
                "lists a header step-up reads (Content-Type, or the idempotency key's \
                 header): the payment API would not get it",
            ),
        }
    }
}

/// A candidate route, as matched by [`StepUp::classify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Candidate {
    pub(super) route: u16,
    /// What identifies the request (path, idempotency key), for a derived reference.
    pub(super) key: reference::RequestKey,
    /// Who the partner is, when partners are on.
    pub(super) partner: partners::PartnerRef,
    /// No `Content-Type`: Rack and PHP read such a POST body as a form.
    pub(super) untyped: bool,
}

impl Candidate {
    /// The partner the request names (`[partners]` on, a valid id, served or not): for
    /// logs and metrics also when the request is refused.
    pub fn partner(&self) -> Option<&str> {
        match &self.partner {
            partners::PartnerRef::Listed { id, .. } | partners::PartnerRef::Unlisted(id) => {
                Some(id.as_str())
            }
            _ => None,
        }
    }
}

// === impl StepUp: classifying a request ===

impl StepUp {
    /// Classifies a request from its head. Costs a route lookup on method and path; the
    /// body is never looked at here.
    ///
    /// Fail closed on candidate routes: an ambiguous spelling of a candidate route's path
    /// (ASCII case, trailing `/`, `//`, dot segments, `;parameters`, percent-escapes, `\`)
    /// or method (case) is [`Route::Refused`] (400 `non_canonical_path`), as is a body the
    /// layer will not read: a content type other than JSON (415 `unsupported_media_type`) or
    /// any `Content-Encoding` (415 `unsupported_content_encoding`). Any spelling of the
    /// webhook relay path is [`Route::RelayPathFromOutside`]. A path already in canonical
    /// form (the usual case) is only scanned once.
    pub fn classify(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Route {
        let path = uri.path();
        let raw = path.as_bytes();
        let e = &*self.inner;
        if let Some(w) = &e.webhooks {
            if path == w.path && *method == Method::POST {
                return Route::Webhook;
            }
        }
        // The payment API's paths that only the layer may reach (the webhook relay, the
        // return notification), in any spelling a router may read as one.
        if e.internal_paths.iter().any(|p| routes::names(raw, p)) {
            return Route::RelayPathFromOutside;
        }
        if let Some(r) = &e.acquirer_return {
            if (*method == Method::GET || *method == Method::HEAD) && r.serves(path) {
                return Route::Return;
            }
        }
        let Some(route) = e.routes.iter().position(|r| r.matches(method, raw)) else {
            return self.loosely_named(method, path);
        };
        let route = route as u16;
        let idempotency = e.idempotency_header.as_ref().and_then(|h| headers.get(h));
        let partner = self.partner_named(route, raw, headers);
        let candidate = Candidate {
            route,
            key: reference::RequestKey::new(path, idempotency.map(HeaderValue::as_bytes)),
            partner,
            untyped: !headers.contains_key(http::header::CONTENT_TYPE),
        };
        // A payment field in the query: a framework that merges query and body would read
        // it unchecked.
        if uri
            .query()
            .is_some_and(|q| routes::query_names(q).any(|name| e.reads_top_level(&name)))
        {
            return Route::Refused(HeadRefusal {
                candidate,
                reason: HeadReason::QueryField,
            });
        }
        // A body the layer cannot read is not forwarded unread.
        if let Some(reason) = head::unreadable_request_body(headers) {
            return Route::Refused(HeadRefusal { candidate, reason });
        }
        // A header the layer decides by, listed in `Connection`: removed on the way, the
        // payment API would read the request otherwise (an untyped body, which Rack reads
        // as a form; no idempotency key). Most requests list no header at all.
        if headers.contains_key(http::header::CONNECTION)
            && (head::in_connection(headers, &http::header::CONTENT_TYPE)
                || e.idempotency_header
                    .as_ref()
                    .is_some_and(|h| head::in_connection(headers, h)))
        {
            return Route::Refused(HeadRefusal {
                candidate,
                reason: HeadReason::HopByHopRead,
            });
        }
        Route::Candidate(candidate)
    }

    /// A path that is no candidate route as written: an ambiguous spelling of one (refused,
    /// 400 `non_canonical_path`) or not ours. Only methods that could be a candidate's get
    /// past the first test.
    fn loosely_named(&self, method: &Method, path: &str) -> Route {
        let e = &*self.inner;
        if !e.routes.iter().any(|r| r.loose_method(method)) {
            return Route::PassThrough;
        }
        let route = routes::readings(path.as_bytes()).find_map(|reading| {
            e.routes
                .iter()
                .position(|r| r.matches_loosely(method, &reading))
        });
        match route {
            Some(i) => Route::Refused(HeadRefusal {
                candidate: Candidate {
                    route: i as u16,
                    key: reference::RequestKey::new(path, None),
                    partner: partners::PartnerRef::Off,
                    untyped: false,
                },
                reason: HeadReason::NonCanonicalPath,
            }),
            None => Route::PassThrough,
        }
    }

    /// Who the partner of a candidate request is, when `[partners]` is on: the gateway's
    /// header (sent once, in one spelling) or the route's path parameter.
    fn partner_named(&self, route: u16, raw: &[u8], headers: &HeaderMap) -> partners::PartnerRef {
        let e = &*self.inner;
        let Some(p) = &e.partners else {
            return partners::PartnerRef::Off;
        };
        match &p.source {
            partners::Source::Header(h) => {
                let mut values = headers.get_all(h).iter();
                match (values.next(), values.next()) {
                    // Two identities: which one would the payment API read?
                    (Some(_), Some(_)) => partners::PartnerRef::Ambiguous,
                    _ if head::names_elsewhere(headers, h) => partners::PartnerRef::Ambiguous,
                    (first, _) => p.identify(first.map(HeaderValue::as_bytes)),
                }
            }
            partners::Source::PathParam(name) => {
                p.identify(e.routes[route as usize].param(raw, name))
            }
        }
    }

    /// The path pattern of the route an exchange came through, for logs and metrics.
    pub fn route_pattern(&self, exchange: &Exchange) -> &str {
        self.inner
            .routes
            .get(exchange.route as usize)
            .map_or("", |r| &r.pattern)
    }

    /// The mode a candidate is served in: its partner's entry's `mode`, else the top-level
    /// one.
    pub fn mode(&self, candidate: Candidate) -> crate::config::Mode {
        match (&self.inner.partners, candidate.partner) {
            (Some(p), partners::PartnerRef::Listed { entry, .. }) => {
                p.policies[entry as usize].mode
            }
            _ => self.inner.config.mode,
        }
    }

    /// The path pattern of a candidate's route (as configured, e.g.
    /// `/v2/accounts/{id}/payment/authorize`), for logs and metrics before there is an
    /// exchange.
    pub fn candidate_pattern(&self, candidate: Candidate) -> &str {
        self.inner
            .routes
            .get(candidate.route as usize)
            .map_or("", |r| &r.pattern)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::*;
    use http::{HeaderMap, Method, StatusCode, Uri};

    fn engine(toml: &str) -> StepUp {
        StepUp::from_toml(toml).unwrap()
    }

    #[test]
    fn empty_config_is_valid_with_default_routes() {
        let e = engine("");
        let h = HeaderMap::new();
        let post = Method::POST;
        for path in [
            "/payments",
            "/v1/payments",
            "/v2/accounts/acc-1/payment/authorize",
            "/payments?x=1",
        ] {
            let uri: Uri = path.parse().unwrap();
            assert!(
                matches!(e.classify(&post, &uri, &h), Route::Candidate(_)),
                "{path}"
            );
        }
        for (m, path) in [
            (Method::GET, "/payments"),
            (Method::POST, "/payments/1"),
            (Method::POST, "/v2/accounts//payment/authorize"),
            (Method::POST, "/v2/accounts/a/b/payment/authorize"),
            (Method::POST, "/"),
        ] {
            assert_eq!(
                e.classify(&m, &path.parse().unwrap(), &h),
                Route::PassThrough,
                "{m} {path}"
            );
        }
        assert_eq!(e.body_limit(), DEFAULT_BODY_LIMIT);
    }

    #[test]
    fn classify_skips_bodies_we_cannot_read() {
        let e = engine("");
        let uri: Uri = "/payments".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert!(matches!(
            e.classify(&Method::POST, &uri, &h),
            Route::Candidate(_)
        ));
        h.insert(
            "content-type",
            HeaderValue::from_static("application/vnd.api+json"),
        );
        assert!(matches!(
            e.classify(&Method::POST, &uri, &h),
            Route::Candidate(_)
        ));
        let refused = |h: &HeaderMap| match e.classify(&Method::POST, &uri, h) {
            Route::Refused(r) => r.refusal(),
            other => panic!("{other:?}"),
        };
        h.insert(
            "content-type",
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        let r = refused(&h);
        assert_eq!(
            (r.status().as_u16(), r.code().as_str()),
            (415, "unsupported_media_type")
        );
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        assert_eq!(refused(&h).code().as_str(), "unsupported_media_type");
        h.remove("content-type");
        h.insert("content-encoding", HeaderValue::from_static("gzip"));
        let r = refused(&h);
        assert_eq!(
            (r.status().as_u16(), r.code().as_str()),
            (415, "unsupported_content_encoding")
        );
        // Not a candidate: nothing is refused, whatever the head.
        assert_eq!(
            e.classify(&Method::POST, &"/orders".parse().unwrap(), &h),
            Route::PassThrough
        );
    }

    #[test]
    fn ambiguous_forms_of_candidate_routes_are_refused() {
        let e = engine("");
        let h = HeaderMap::new();
        for path in [
            "/payments/",
            "/Payments",
            "/PAYMENTS",
            "//payments",
            "/payments;x=1",
            "/%70ayments",
            "/%2570ayments",
            "/x/../payments",
            "/./payments",
            "/payments/.",
            "/payments%2F",
            "/v1//payments",
            "/V2/accounts/acc-1/payment/authorize",
            "/v2/accounts/acc-1/payment/authorize/",
            "/v2/accounts/acc-1/payment/./authorize",
            "/v2/accounts/acc-1;x/payment/authorize;y",
            // Format suffixes, trailing dots, spaces and NULs (Rails, Sinatra, C routers).
            "/payments.json",
            "/payments.",
            "/payments%2ejson",
            "/payments%20",
            "/payments%00",
            "/v2/accounts/acc-1/payment/authorize.json",
        ] {
            match e.classify(&Method::POST, &path.parse().unwrap(), &h) {
                Route::Refused(r) => {
                    let r = r.refusal();
                    assert_eq!(
                        (r.status().as_u16(), r.code().as_str()),
                        (400, "non_canonical_path")
                    );
                }
                other => panic!("{path}: {other:?}"),
            }
        }
        // The method too, in another case.
        let post = Method::from_bytes(b"post").unwrap();
        assert!(matches!(
            e.classify(&post, &"/payments".parse().unwrap(), &h),
            Route::Refused(_)
        ));
        // Other methods and other paths are not ours.
        for (m, path) in [
            (Method::GET, "/Payments/"),
            (Method::POST, "/payments/1"),
            (Method::POST, "/paymentsx"),
            (Method::POST, "/v2/accounts//payment/authorize"),
        ] {
            assert_eq!(
                e.classify(&m, &path.parse().unwrap(), &h),
                Route::PassThrough,
                "{m} {path}"
            );
        }
    }

    #[test]
    fn every_spelling_of_the_relay_path_is_refused() {
        let e = StepUp::with_secrets(
            StepUpConfig::from_toml(
                "[webhooks]\nenabled = true\nkeys = [{ id = \"k\", env = \"W\" }]\n",
            )
            .unwrap(),
            |_| Some("key".into()),
        )
        .unwrap();
        let h = HeaderMap::new();
        for path in [
            "/webhooks/klarna",
            "/webhooks/klarna/",
            "/webhooks/Klarna",
            "/WEBHOOKS/KLARNA",
            "/webhooks/%6blarna",
            "/webhooks/%6Blarna",
            "//webhooks/klarna",
            "/webhooks//klarna",
            "/webhooks/klarna;x",
            "/webhooks/./klarna",
            "/x/../webhooks/klarna",
            "/webhooks%2Fklarna",
            "/webhooks\\klarna",
            "/webhooks/klarna?x=1",
            "/webhooks/klarna.json",
            "/webhooks/klarna.",
            "/webhooks/klarna%2e",
            "/webhooks/klarna%20",
            "/webhooks/klarna%00",
            "/webhooks./klarna",
        ] {
            for m in [Method::POST, Method::GET, Method::PUT] {
                assert_eq!(
                    e.classify(&m, &path.parse().unwrap(), &h),
                    Route::RelayPathFromOutside,
                    "{m} {path}"
                );
            }
        }
        for path in ["/webhooks/klarnax", "/webhooks/klarna/1", "/webhooks"] {
            assert_eq!(
                e.classify(&Method::POST, &path.parse().unwrap(), &h),
                Route::PassThrough,
                "{path}"
            );
        }
    }

    #[test]
    fn the_return_notification_path_is_the_layers_alone() {
        let e = StepUp::with_secrets(
            StepUpConfig::from_toml(
                "[acquirer_return]\nenabled = true\npublic_base_url = \"https://pay.acquirer.example\"\n\
                 keys = [{ id = \"r\", env = \"R\" }]\nnotify_path = \"/internal/returns\"\n",
            )
            .unwrap(),
            |_| Some("return-key-0123456789abcdef0123456789".into()),
        )
        .unwrap();
        let h = HeaderMap::new();
        for path in [
            "/internal/returns",
            "/internal/Returns/",
            "/internal/returns.json",
            "/internal/%72eturns",
            "/internal/returns%00",
        ] {
            assert_eq!(
                e.classify(&Method::POST, &path.parse().unwrap(), &h),
                Route::RelayPathFromOutside,
                "{path}"
            );
        }
    }

    #[test]
    fn payment_fields_in_the_query_are_refused() {
        let e = engine("");
        let h = HeaderMap::new();
        for query in [
            "payment_method=klarna",
            "x=1&step_up_config[customer_interaction_config][return_url]=https://evil.example/",
            "Return_Url=https://evil.example/",
            "klarna_return_url=x",
            "a=1;return.url=x",
            "%72eturn_url=x",
            "reference=r",
        ] {
            let uri: Uri = format!("/payments?{query}").parse().unwrap();
            match e.classify(&Method::POST, &uri, &h) {
                Route::Refused(r) => {
                    let r = r.refusal();
                    assert_eq!(
                        (r.status().as_u16(), r.code().as_str()),
                        (400, "query_field"),
                        "{query}"
                    );
                    assert_eq!(r.param(), Some("query"));
                }
                other => panic!("{query}: {other:?}"),
            }
        }
        for query in ["", "x=1", "expand=payment_request", "return=1"] {
            let uri: Uri = format!("/payments?{query}").parse().unwrap();
            assert!(
                matches!(e.classify(&Method::POST, &uri, &h), Route::Candidate(_)),
                "{query}"
            );
        }
    }

    /// A header the layer decides by, listed in `Connection` (a proxy removes it on the
    /// way), is refused: the payment API would read another request than the layer did.
    #[test]
    fn headers_the_layer_reads_listed_in_connection_are_refused() {
        let e = engine("[partner_fields]\nidempotency_header = \"Idempotency-Key\"\n");
        let uri: Uri = "/payments".parse().unwrap();
        let head = |connection: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("content-type", HeaderValue::from_static("application/json"));
            h.insert("idempotency-key", HeaderValue::from_static("k-1"));
            h.append("connection", HeaderValue::from_static("keep-alive"));
            h.append("connection", HeaderValue::from_static(connection));
            h
        };
        for listed in [
            "Content-Type",
            "keep-alive, content-type",
            "Content_Type",
            "idempotency-key",
            " Idempotency_Key ",
        ] {
            match e.classify(&Method::POST, &uri, &head(listed)) {
                Route::Refused(r) => {
                    let r = r.refusal();
                    assert_eq!(
                        (r.status().as_u16(), r.code().as_str(), r.param()),
                        (400, "bad_request_head", Some("Connection")),
                        "{listed}"
                    );
                }
                other => panic!("{listed}: {other:?}"),
            }
        }
        for listed in ["close", "x-other, te", "content-length"] {
            assert!(
                matches!(
                    e.classify(&Method::POST, &uri, &head(listed)),
                    Route::Candidate(_)
                ),
                "{listed}"
            );
        }
        // Not a candidate route: nothing to decide, passed through.
        let other: Uri = "/orders".parse().unwrap();
        assert_eq!(
            e.classify(&Method::POST, &other, &head("Content-Type")),
            Route::PassThrough
        );
    }

    /// An idempotency key header a proxy never forwards is a configuration error.
    #[test]
    fn a_hop_by_hop_idempotency_header_is_refused() {
        for name in ["Keep-Alive", "connection", "Proxy-Key", "TE"] {
            let toml = format!("[partner_fields]\nidempotency_header = \"{name}\"\n");
            let err = StepUp::from_toml(&toml).unwrap_err().to_string();
            assert!(
                err.contains("partner_fields.idempotency_header") && err.contains("hop-by-hop"),
                "{name}: {err}"
            );
        }
        assert!(
            StepUp::from_toml("[partner_fields]\nidempotency_header = \"Idempotency-Key\"\n")
                .is_ok()
        );
    }

    #[test]
    fn config_errors_name_every_key() {
        let err = StepUp::from_toml(
            r#"
            body_limit = 0
            inject_at = "a..b"
            [[routes]]
            method = "PO ST"
            path = "/x"
            [[routes]]
            method = "POST"
            path = "no-slash"
            [defaults]
            return_url = "http://partner.example/r"
            app_return_url = "javascript:alert(1)"
            interaction_expiry = "PT5M"
            [partner_response]
            pending = ""
            redirect_url = "https://acq.example/{nope}"
            "#,
        )
        .unwrap_err();
        let keys: Vec<_> = err.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "body_limit",
                "routes[0].method",
                "routes[1].path",
                "inject_at",
                "defaults.return_url",
                "defaults.app_return_url",
                "defaults.interaction_expiry",
                "partner_response.pending",
                "partner_response.redirect_url",
            ],
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = StepUp::from_toml("[return_url_policy]\nmax_lenght = 3\n").unwrap_err();
        assert_eq!(err.0[0].key, "return_url_policy.max_lenght");
        assert_eq!(err.0[0].location, Some((2, 1)));
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn klarna_error_ids_are_read_from_small_json_errors_only() {
        let e = engine("");
        let json = |h: &mut HeaderMap| {
            h.insert("content-type", HeaderValue::from_static("application/json"));
        };
        let mut h = HeaderMap::new();
        json(&mut h);
        assert!(e.reads_error(StatusCode::BAD_REQUEST, &h, Some(300)));
        assert!(
            !e.reads_error(StatusCode::BAD_REQUEST, &h, None),
            "unknown length"
        );
        assert!(
            !e.reads_error(StatusCode::BAD_REQUEST, &h, Some(20_000)),
            "too long"
        );
        assert!(
            !e.reads_error(StatusCode::OK, &h, Some(300)),
            "not an error"
        );
        h.insert("content-encoding", HeaderValue::from_static("gzip"));
        assert!(
            !e.reads_error(StatusCode::BAD_GATEWAY, &h, Some(300)),
            "encoded"
        );
        assert!(!e.reads_error(StatusCode::BAD_REQUEST, &HeaderMap::new(), Some(3)));

        let body = br#"{"error_id":"abcd-1","error_type":"INPUT_ERROR"}"#;
        assert_eq!(e.klarna_error_id(body).as_deref(), Some("abcd-1"));
        assert_eq!(e.klarna_error_id(br#"{"error_id":"has space"}"#), None);
        assert_eq!(e.klarna_error_id(b"<html>"), None);
        let nested = engine("klarna_answer_at = \"klarna\"");
        let body = br#"{"id":"pay_1","klarna":{"error_id":"k-2"}}"#;
        assert_eq!(nested.klarna_error_id(body).as_deref(), Some("k-2"));
    }
}
