//! Proxy-Wasm contexts: the only code that talks to the host. Callbacks read host state, call
//! the pure logic (`plan`, ...) and apply the result. Every host call's `Status` is handled:
//! the SDK's trait helpers panic on errors (a trap kills the VM for every request on that
//! worker), so `hostcalls` is used directly.

mod host;

use crate::body::InvalidBody;
use crate::config::Config;
use crate::plan::{self, Plan};
use host::{clear_route_cache, request_body, request_headers, send_reply, set_request_header};
use log::{error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType};
use std::rc::Rc;

/// One per VM (worker thread): holds the validated configuration.
#[derive(Default)]
pub struct Root {
    config: Option<Rc<Config>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(b) => b.unwrap_or_default(),
            Err(status) => {
                error!("llm-router: cannot read the plugin configuration: {status:?}");
                return false;
            }
        };
        match Config::parse(&bytes) {
            Ok(cfg) => {
                info!(
                    "llm-router: configured: {} tiers, {} rules, {} model splits",
                    cfg.tiers.len(),
                    cfg.rules.len(),
                    cfg.models.len()
                );
                self.config = Some(Rc::new(cfg));
                true
            }
            Err(e) => {
                // One line naming the field; the previous configuration (if any) stays.
                error!("llm-router: {e}");
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    // The SDK traps when this returns None: always hand out a context (one without a
    // configuration passes requests through).
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http::new(self.config.clone())))
    }
}

/// One per HTTP request.
pub struct Http {
    cfg: Option<Rc<Config>>,
    /// Headers are held and the body is being collected.
    inspecting: bool,
    path: String,
}

impl Http {
    fn new(cfg: Option<Rc<Config>>) -> Self {
        Http {
            cfg,
            inspecting: false,
            path: String::new(),
        }
    }

    /// Decides with the body (or why there is none usable) and applies the decision.
    /// `body_size` is the size of the body buffer the host holds now.
    fn decide(
        &mut self,
        cfg: &Config,
        body: Result<&[u8], InvalidBody>,
        body_size: usize,
    ) -> Action {
        self.inspecting = false;
        let headers = request_headers();
        let plan = plan::plan(cfg, &self.path, &headers, body, random_u64());
        match plan {
            Plan::Reply(reply) => {
                send_reply(&reply);
                Action::Pause
            }
            Plan::Forward(fwd) => {
                for (name, value) in &fwd.set_headers {
                    set_request_header(name, Some(value));
                }
                if let Some(new_body) = &fwd.body {
                    match hostcalls::set_buffer(BufferType::HttpRequestBody, 0, body_size, new_body)
                    {
                        // The length changed: Envoy recomputes framing without it.
                        Ok(()) => set_request_header("content-length", None),
                        Err(status) => warn!("llm-router: cannot rewrite the body: {status:?}"),
                    }
                }
                clear_route_cache();
                Action::Continue
            }
        }
    }
}

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(cfg) = self.cfg.clone() else {
            return Action::Continue;
        };
        // A client never chooses its own tier, model, endpoint or token count.
        for name in cfg.headers.owned() {
            set_request_header(name, None);
        }
        let headers = request_headers();
        let method = plan::header(&headers, ":method").unwrap_or_default();
        let path = plan::header(&headers, ":path").unwrap_or_default();
        if method != "POST" || !cfg.is_api_path(path) {
            return Action::Continue;
        }
        self.path = path.to_string();
        if end_of_stream {
            return self.decide(&cfg, Ok(&[]), 0);
        }
        let declared = plan::header(&headers, "content-length").and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > cfg.max_body_bytes as u64) {
            return self.decide(&cfg, Err(InvalidBody::TooLarge), 0);
        }
        // Hold the headers until the whole body is here (needs the filter option
        // `allow_on_headers_stop_iteration: true` in Envoy).
        self.inspecting = true;
        Action::Pause
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.inspecting {
            return Action::Continue;
        }
        let Some(cfg) = self.cfg.clone() else {
            return Action::Continue;
        };
        if body_size > cfg.max_body_bytes {
            // Decide now without reading it; the rest streams through.
            return self.decide(&cfg, Err(InvalidBody::TooLarge), body_size);
        }
        if !end_of_stream {
            return Action::Pause; // Envoy buffers; the next call sees the whole body so far.
        }
        let body = request_body(body_size);
        self.decide(&cfg, Ok(&body), body_size)
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if !self.inspecting {
            return Action::Continue;
        }
        let Some(cfg) = self.cfg.clone() else {
            return Action::Continue;
        };
        // A body ended by trailers (HTTP/2, gRPC-style clients): decide on what was buffered.
        let body = request_body(cfg.max_body_bytes.saturating_add(1));
        if body.len() > cfg.max_body_bytes {
            return self.decide(&cfg, Err(InvalidBody::TooLarge), body.len());
        }
        let size = body.len();
        self.decide(&cfg, Ok(&body), size)
    }
}

fn random_u64() -> u64 {
    getrandom::u64().unwrap_or(0)
}
