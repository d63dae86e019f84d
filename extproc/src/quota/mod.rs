//! `llm-router-extproc quota`: the global-limits quota service (issue 14,
//! docs/global-limits.md). Token buckets in Redis, changed only by one Lua script
//! (`bucket.lua`), served as the `llm_router.quota.v1.Quota` gRPC API (the filter's leases)
//! and as Envoy's rate-limit service, on one port.
//!
//! Modules, in dependency order: `limits` (what is accepted; pure), `config` (tenants' limits
//! from the plugin configuration; pure), `stats`, `proto` (messages and service glue),
//! `script` (Redis), `service` (Quota), `rls` (RateLimitService), `server` (wiring), `cli`.

pub mod cli;
pub mod config;
pub mod limits;
pub mod proto;
pub mod rls;
pub mod script;
pub mod server;
pub mod service;
pub mod stats;
