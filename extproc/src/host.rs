//! The production engine. THE compile-time dependency point on the `host_engine` crate
//! (package `llm-router-host`): until that crate is a workspace member, this build has no
//! engine and `start` refuses with a message that says so.

use crate::engine::{
    EngineError, EngineSettings, EngineStats, FilterEngine, FilterStream, Headers, Step,
    StreamProps,
};

/// No engine in this build (uninhabited: no value of it exists).
pub enum NoEngine {}

/// No stream either.
pub enum NoStream {}

impl FilterStream for NoStream {
    fn request_headers(&mut self, _: Headers, _: bool) -> Step {
        match *self {}
    }
    fn request_body(&mut self, _: Vec<u8>, _: bool) -> Step {
        match *self {}
    }
    fn request_trailers(&mut self, _: Headers) -> Step {
        match *self {}
    }
    fn response_headers(&mut self, _: Headers, _: bool) -> Step {
        match *self {}
    }
    fn response_body(&mut self, _: Vec<u8>, _: bool) -> Step {
        match *self {}
    }
    fn response_trailers(&mut self, _: Headers) -> Step {
        match *self {}
    }
    fn finish(self) {
        match self {}
    }
}

impl FilterEngine for NoEngine {
    type Stream = NoStream;
    fn open_stream(&self, _: StreamProps) -> NoStream {
        match *self {}
    }
    fn reconfigure(&self, _: Vec<u8>) -> Result<(), EngineError> {
        match *self {}
    }
    fn prometheus(&self) -> String {
        match *self {}
    }
    fn stats(&self) -> EngineStats {
        match *self {}
    }
}

pub type ProductionEngine = NoEngine;

pub fn start(_settings: EngineSettings) -> Result<ProductionEngine, EngineError> {
    Err(EngineError(
        "this build has no Proxy-Wasm host engine (crate llm-router-host not linked)".into(),
    ))
}
