//! The quota service's API (`proto/llm_router/quota/v1/quota.proto`) as the filter speaks it:
//! the messages, their hand-written protobuf codec (`wire`), and the gRPC names.

pub mod wire;

/// gRPC service name of the quota API.
pub const SERVICE: &str = "llm_router.quota.v1.Quota";

/// The three methods, as `dispatch_grpc_call` names them (and as metrics label them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Take,
    Give,
    Charge,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Take => "Take",
            Method::Give => "Give",
            Method::Charge => "Charge",
        }
    }

    /// Index into `metrics::GLOBAL_METHOD`.
    pub fn label(self) -> u16 {
        match self {
            Method::Take => 0,
            Method::Give => 1,
            Method::Charge => 2,
        }
    }
}

/// One Redis bucket: (tenant, limit) with its rate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Bucket {
    pub tenant: String,
    /// `requests` or `tokens`.
    pub limit: String,
    pub per_minute: u64,
    pub capacity: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TakeItem {
    pub bucket: Bucket,
    pub want: i64,
    pub min: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TakeRequest {
    pub items: Vec<TakeItem>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Grant {
    pub granted: i64,
    pub level: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TakeResponse {
    pub grants: Vec<Grant>,
    pub retry_after_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AmountItem {
    pub bucket: Bucket,
    pub amount: i64,
}

/// `Give` and `Charge`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AmountRequest {
    pub items: Vec<AmountItem>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LevelsResponse {
    pub levels: Vec<i64>,
}

#[cfg(test)]
mod tests;
