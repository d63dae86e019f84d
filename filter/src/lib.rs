//! llm-router: a Proxy-Wasm HTTP filter for OpenAI-style inference traffic.
//!
//! Decision logic lives in pure modules (no proxy-wasm calls) that are unit-tested natively:
//! `config`, `body`, `tokens`, `routing`, `reply`. The `glue` module holds the proxy-wasm
//! contexts: they read host state, call the logic and apply the result.

pub mod blocks;
pub mod body;
pub mod config;
pub mod endpoints;
pub mod glue;
pub mod hostmap;
pub mod metrics;
pub mod path;
pub mod plan;
pub mod prefix;
pub mod quota;
// Property checks and generators of the property tests: not part of the shipped module.
#[cfg(test)]
pub mod props;
pub mod ratelimit;
pub mod reply;
pub mod routing;
pub mod splitmix;
pub mod store;
pub mod tokens;
pub mod trace;
pub mod usage;

#[cfg(test)]
mod testutil;

// The module's allocator (`blocks`), in the wasm build only (one thread per module).
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
#[global_allocator]
static ALLOCATOR: blocks::SmallBlocks = blocks::SmallBlocks::new();

// The module's entry point; only in the wasm build (native builds are for unit tests).
#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    // Not the SDK's logger: it unwraps the host's answer to every log call.
    glue::init_logging();
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(glue::Root::default())
    });
}}
