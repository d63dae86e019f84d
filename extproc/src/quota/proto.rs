//! `llm_router.quota.v1` (proto/llm_router/quota/v1/quota.proto), written out by hand: the
//! messages as prost structs and the `Quota` service as a tonic server and client.
//!
//! Why by hand: the API is seven flat messages and three unary methods, and the filter encodes
//! the same messages by hand too. Generating them needs `protox` + `tonic-prost-build` at build
//! time (a parser, a reflection library and a code generator compiled before this crate, on
//! every clean build). `tests/quota_proto.rs` checks these structs against the .proto file's
//! field names, numbers and types, so the two cannot drift apart silently.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codegen::{http, Body, BoxFuture, StdError};

/// `Bucket` in quota.proto.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Bucket {
    #[prost(string, tag = "1")]
    pub tenant: String,
    #[prost(string, tag = "2")]
    pub limit: String,
    #[prost(uint64, tag = "3")]
    pub per_minute: u64,
    #[prost(uint64, tag = "4")]
    pub capacity: u64,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct TakeItem {
    #[prost(message, optional, tag = "1")]
    pub bucket: Option<Bucket>,
    #[prost(int64, tag = "2")]
    pub want: i64,
    #[prost(int64, tag = "3")]
    pub min: i64,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct TakeRequest {
    #[prost(message, repeated, tag = "1")]
    pub items: Vec<TakeItem>,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct TakeResponse {
    #[prost(message, repeated, tag = "1")]
    pub grants: Vec<Grant>,
    #[prost(uint64, tag = "2")]
    pub retry_after_ms: u64,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Grant {
    #[prost(int64, tag = "1")]
    pub granted: i64,
    #[prost(int64, tag = "2")]
    pub level: i64,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AmountItem {
    #[prost(message, optional, tag = "1")]
    pub bucket: Option<Bucket>,
    #[prost(int64, tag = "2")]
    pub amount: i64,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AmountRequest {
    #[prost(message, repeated, tag = "1")]
    pub items: Vec<AmountItem>,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct LevelsResponse {
    #[prost(int64, repeated, tag = "1")]
    pub levels: Vec<i64>,
}

pub const SERVICE_NAME: &str = "llm_router.quota.v1.Quota";
pub const TAKE_PATH: &str = "/llm_router.quota.v1.Quota/Take";
pub const GIVE_PATH: &str = "/llm_router.quota.v1.Quota/Give";
pub const CHARGE_PATH: &str = "/llm_router.quota.v1.Quota/Charge";

type Answer<T> = Result<tonic::Response<T>, tonic::Status>;
pub type AnswerFuture<T> = Pin<Box<dyn Future<Output = Answer<T>> + Send>>;

/// The service's methods.
pub trait Quota: Send + Sync + 'static {
    fn take(&self, request: tonic::Request<TakeRequest>) -> AnswerFuture<TakeResponse>;
    fn give(&self, request: tonic::Request<AmountRequest>) -> AnswerFuture<LevelsResponse>;
    fn charge(&self, request: tonic::Request<AmountRequest>) -> AnswerFuture<LevelsResponse>;
}

/// Serves a `Quota` implementation (what tonic's generated `QuotaServer` would be).
pub struct QuotaServer<T>(Arc<T>);

impl<T> QuotaServer<T> {
    pub fn from_arc(inner: Arc<T>) -> Self {
        QuotaServer(inner)
    }
}

impl<T> Clone for QuotaServer<T> {
    fn clone(&self) -> Self {
        QuotaServer(self.0.clone())
    }
}

impl<T> tonic::server::NamedService for QuotaServer<T> {
    const NAME: &'static str = SERVICE_NAME;
}

/// One unary method of `T`, as tonic's server wants it.
struct Method<T, Req, Res> {
    inner: Arc<T>,
    call: fn(&T, tonic::Request<Req>) -> AnswerFuture<Res>,
}

impl<T, Req, Res> tonic::server::UnaryService<Req> for Method<T, Req, Res>
where
    T: Quota,
    Req: Send + 'static,
    Res: Send + 'static,
{
    type Response = Res;
    type Future = AnswerFuture<Res>;

    fn call(&mut self, request: tonic::Request<Req>) -> Self::Future {
        (self.call)(&self.inner, request)
    }
}

fn unary<T, Req, Res, B>(
    inner: Arc<T>,
    call: fn(&T, tonic::Request<Req>) -> AnswerFuture<Res>,
    req: http::Request<B>,
) -> BoxFuture<http::Response<tonic::body::Body>, std::convert::Infallible>
where
    T: Quota,
    Req: prost::Message + Default + Send + 'static,
    Res: prost::Message + Send + 'static,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    Box::pin(async move {
        let codec = tonic_prost::ProstCodec::<Res, Req>::default();
        let mut grpc = tonic::server::Grpc::new(codec);
        Ok(grpc.unary(Method { inner, call }, req).await)
    })
}

fn unimplemented() -> http::Response<tonic::body::Body> {
    tonic::Status::unimplemented("no such method").into_http()
}

impl<T, B> tonic::codegen::Service<http::Request<B>> for QuotaServer<T>
where
    T: Quota,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let inner = self.0.clone();
        match req.uri().path() {
            TAKE_PATH => unary(inner, T::take, req),
            GIVE_PATH => unary(inner, T::give, req),
            CHARGE_PATH => unary(inner, T::charge, req),
            _ => Box::pin(async { Ok(unimplemented()) }),
        }
    }
}

/// A client of the service (tests, tools).
#[derive(Debug, Clone)]
pub struct QuotaClient {
    grpc: tonic::client::Grpc<tonic::transport::Channel>,
}

impl QuotaClient {
    pub fn new(channel: tonic::transport::Channel) -> Self {
        QuotaClient {
            grpc: tonic::client::Grpc::new(channel),
        }
    }

    async fn call<Req, Res>(&mut self, path: &'static str, request: Req) -> Answer<Res>
    where
        Req: prost::Message + Send + Sync + 'static,
        Res: prost::Message + Default + Send + Sync + 'static,
    {
        self.grpc
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let codec = tonic_prost::ProstCodec::<Req, Res>::default();
        let path = http::uri::PathAndQuery::from_static(path);
        self.grpc
            .unary(tonic::Request::new(request), path, codec)
            .await
    }

    pub async fn take(&mut self, request: TakeRequest) -> Answer<TakeResponse> {
        self.call(TAKE_PATH, request).await
    }

    pub async fn give(&mut self, request: AmountRequest) -> Answer<LevelsResponse> {
        self.call(GIVE_PATH, request).await
    }

    pub async fn charge(&mut self, request: AmountRequest) -> Answer<LevelsResponse> {
        self.call(CHARGE_PATH, request).await
    }
}
