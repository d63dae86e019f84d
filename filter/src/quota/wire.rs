//! Protobuf (proto3) encoding of exactly the quota API's messages, by hand: the filter needs
//! six small flat messages, which does not justify a code generator and a runtime in the wasm.
//!
//! Encoders write proto3's canonical form (fields in number order, zero values left out,
//! repeated scalars packed). Decoders read anything a conforming encoder may write: fields in
//! any order, a repeated field's elements spread over several occurrences, packed or unpacked
//! scalars, unknown fields of every wire type skipped. They refuse malformed input (truncated,
//! a varint past ten bytes, a length past the end, groups, field number 0, invalid UTF-8)
//! with an error, never a panic, and bound what they accept ([`MAX_MESSAGE_BYTES`],
//! [`MAX_ITEMS`], [`MAX_STRING_BYTES`]).

use super::{
    AmountItem, AmountRequest, Bucket, Grant, LevelsResponse, TakeItem, TakeRequest, TakeResponse,
};

/// Largest message decoded.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Most elements of a repeated field.
pub const MAX_ITEMS: usize = 256;
/// Longest string field.
pub const MAX_STRING_BYTES: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    TooLarge,
    Truncated,
    BadVarint,
    BadWireType,
    BadFieldNumber,
    BadUtf8,
    TooMany,
}

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

// ---- encoding -------------------------------------------------------------------------------

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn put_u64(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        put_key(out, field, VARINT);
        put_varint(out, v);
    }
}

/// int64: two's complement as a 64-bit varint (ten bytes when negative), as protobuf does.
fn put_i64(out: &mut Vec<u8>, field: u32, v: i64) {
    put_u64(out, field, v as u64);
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_str(out: &mut Vec<u8>, field: u32, s: &str) {
    if !s.is_empty() {
        put_bytes(out, field, s.as_bytes());
    }
}

/// A sub-message (always written, even when empty: presence matters for `bucket`).
fn put_msg(out: &mut Vec<u8>, field: u32, body: &[u8]) {
    put_bytes(out, field, body);
}

/// `envoy.config.core.v3.GrpcService { envoy_grpc (1) { cluster_name (1) } }`, as a string:
/// plain ASCII for a visible-ASCII name of at most 125 bytes (both lengths fit one byte),
/// which the configuration guarantees. Longer names would not be ASCII: they get the plain
/// name, which Envoy also accepts.
pub fn encode_grpc_service(cluster: &str) -> String {
    if cluster.len() > 125 || !cluster.is_ascii() {
        return cluster.to_string();
    }
    let mut inner = Vec::with_capacity(cluster.len() + 2);
    put_bytes(&mut inner, 1, cluster.as_bytes());
    let mut out = Vec::with_capacity(inner.len() + 2);
    put_msg(&mut out, 1, &inner);
    String::from_utf8(out).unwrap_or_else(|_| cluster.to_string())
}

fn bucket_bytes(b: &Bucket) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.tenant.len() + b.limit.len() + 24);
    put_str(&mut out, 1, &b.tenant);
    put_str(&mut out, 2, &b.limit);
    put_u64(&mut out, 3, b.per_minute);
    put_u64(&mut out, 4, b.capacity);
    out
}

pub fn encode_take_request(m: &TakeRequest) -> Vec<u8> {
    let mut out = Vec::new();
    for item in &m.items {
        let mut body = Vec::new();
        put_msg(&mut body, 1, &bucket_bytes(&item.bucket));
        put_i64(&mut body, 2, item.want);
        put_i64(&mut body, 3, item.min);
        put_msg(&mut out, 1, &body);
    }
    out
}

pub fn encode_amount_request(m: &AmountRequest) -> Vec<u8> {
    let mut out = Vec::new();
    for item in &m.items {
        let mut body = Vec::new();
        put_msg(&mut body, 1, &bucket_bytes(&item.bucket));
        put_i64(&mut body, 2, item.amount);
        put_msg(&mut out, 1, &body);
    }
    out
}

pub fn encode_take_response(m: &TakeResponse) -> Vec<u8> {
    let mut out = Vec::new();
    for g in &m.grants {
        let mut body = Vec::new();
        put_i64(&mut body, 1, g.granted);
        put_i64(&mut body, 2, g.level);
        put_msg(&mut out, 1, &body);
    }
    put_u64(&mut out, 2, m.retry_after_ms);
    out
}

pub fn encode_levels_response(m: &LevelsResponse) -> Vec<u8> {
    let mut out = Vec::new();
    if !m.levels.is_empty() {
        let mut packed = Vec::new();
        for l in &m.levels {
            put_varint(&mut packed, *l as u64);
        }
        put_bytes(&mut out, 1, &packed);
    }
    out
}

// ---- decoding -------------------------------------------------------------------------------

/// A cursor over one message's bytes.
struct Reader<'a> {
    rest: &'a [u8],
}

/// One field's value as it sits on the wire.
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    /// fixed32 / fixed64: none of our fields, skipped.
    Fixed,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Result<Reader<'a>, WireError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(WireError::TooLarge);
        }
        Ok(Reader { rest: bytes })
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let (&b, rest) = self.rest.split_first().ok_or(WireError::Truncated)?;
            self.rest = rest;
            if i == 9 && b > 1 {
                return Err(WireError::BadVarint); // past 64 bits
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(WireError::BadVarint)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.rest.len() {
            return Err(WireError::Truncated);
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    /// The next field (number, value), `None` at the end.
    fn field(&mut self) -> Result<Option<(u64, Value<'a>)>, WireError> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = key >> 3;
        if number == 0 || number > 0x1fff_ffff {
            return Err(WireError::BadFieldNumber);
        }
        let value = match (key & 7) as u8 {
            VARINT => Value::Varint(self.varint()?),
            FIXED64 => {
                self.take(8)?;
                Value::Fixed
            }
            LEN => {
                let len = usize::try_from(self.varint()?).map_err(|_| WireError::Truncated)?;
                Value::Bytes(self.take(len)?)
            }
            FIXED32 => {
                self.take(4)?;
                Value::Fixed
            }
            _ => return Err(WireError::BadWireType),
        };
        Ok(Some((number, value)))
    }
}

/// A scalar field must come as a varint (a known field with another wire type is malformed).
fn varint(v: Value) -> Result<u64, WireError> {
    match v {
        Value::Varint(n) => Ok(n),
        _ => Err(WireError::BadWireType),
    }
}

fn bytes(v: Value<'_>) -> Result<&[u8], WireError> {
    match v {
        Value::Bytes(b) => Ok(b),
        _ => Err(WireError::BadWireType),
    }
}

fn string(v: Value) -> Result<String, WireError> {
    let b = bytes(v)?;
    if b.len() > MAX_STRING_BYTES {
        return Err(WireError::TooLarge);
    }
    std::str::from_utf8(b)
        .map(str::to_string)
        .map_err(|_| WireError::BadUtf8)
}

fn push<T>(list: &mut Vec<T>, item: T) -> Result<(), WireError> {
    if list.len() >= MAX_ITEMS {
        return Err(WireError::TooMany);
    }
    list.push(item);
    Ok(())
}

fn decode_bucket(b: &[u8]) -> Result<Bucket, WireError> {
    let mut r = Reader::new(b)?;
    let mut out = Bucket::default();
    while let Some((n, v)) = r.field()? {
        match n {
            1 => out.tenant = string(v)?,
            2 => out.limit = string(v)?,
            3 => out.per_minute = varint(v)?,
            4 => out.capacity = varint(v)?,
            _ => {}
        }
    }
    Ok(out)
}

/// A sub-message field that occurs more than once is merged (protobuf's rule).
fn merge_bucket(into: &mut Bucket, b: &[u8]) -> Result<(), WireError> {
    let more = decode_bucket(b)?;
    let mut r = Reader::new(b)?;
    while let Some((n, _)) = r.field()? {
        match n {
            1 => into.tenant.clone_from(&more.tenant),
            2 => into.limit.clone_from(&more.limit),
            3 => into.per_minute = more.per_minute,
            4 => into.capacity = more.capacity,
            _ => {}
        }
    }
    Ok(())
}

fn decode_take_item(b: &[u8]) -> Result<TakeItem, WireError> {
    let mut r = Reader::new(b)?;
    let mut out = TakeItem::default();
    while let Some((n, v)) = r.field()? {
        match n {
            1 => merge_bucket(&mut out.bucket, bytes(v)?)?,
            2 => out.want = varint(v)? as i64,
            3 => out.min = varint(v)? as i64,
            _ => {}
        }
    }
    Ok(out)
}

fn decode_amount_item(b: &[u8]) -> Result<AmountItem, WireError> {
    let mut r = Reader::new(b)?;
    let mut out = AmountItem::default();
    while let Some((n, v)) = r.field()? {
        match n {
            1 => merge_bucket(&mut out.bucket, bytes(v)?)?,
            2 => out.amount = varint(v)? as i64,
            _ => {}
        }
    }
    Ok(out)
}

fn decode_grant(b: &[u8]) -> Result<Grant, WireError> {
    let mut r = Reader::new(b)?;
    let mut out = Grant::default();
    while let Some((n, v)) = r.field()? {
        match n {
            1 => out.granted = varint(v)? as i64,
            2 => out.level = varint(v)? as i64,
            _ => {}
        }
    }
    Ok(out)
}

pub fn decode_take_request(b: &[u8]) -> Result<TakeRequest, WireError> {
    let mut r = Reader::new(b)?;
    let mut out = TakeRequest::default();
    while let Some((n, v)) = r.field()? {
        if n == 1 {
            push(&mut out.items, decode_take_item(bytes(v)?)?)?;
        }
    }
    Ok(out)
}

pub fn decode_amount_request(b: &[u8]) -> Result<AmountRequest, WireError> {
    let mut r = Reader::new(b)?;
    let mut out = AmountRequest::default();
    while let Some((n, v)) = r.field()? {
        if n == 1 {
            push(&mut out.items, decode_amount_item(bytes(v)?)?)?;
        }
    }
    Ok(out)
}

pub fn decode_take_response(b: &[u8]) -> Result<TakeResponse, WireError> {
    let mut r = Reader::new(b)?;
    let mut out = TakeResponse::default();
    while let Some((n, v)) = r.field()? {
        match n {
            1 => push(&mut out.grants, decode_grant(bytes(v)?)?)?,
            2 => out.retry_after_ms = varint(v)?,
            _ => {}
        }
    }
    Ok(out)
}

pub fn decode_levels_response(b: &[u8]) -> Result<LevelsResponse, WireError> {
    let mut r = Reader::new(b)?;
    let mut out = LevelsResponse::default();
    while let Some((n, v)) = r.field()? {
        if n != 1 {
            continue;
        }
        match v {
            Value::Varint(l) => push(&mut out.levels, l as i64)?,
            Value::Bytes(packed) => {
                let mut p = Reader::new(packed)?;
                while !p.rest.is_empty() {
                    let l = p.varint()?;
                    push(&mut out.levels, l as i64)?;
                }
            }
            Value::Fixed => return Err(WireError::BadWireType),
        }
    }
    Ok(out)
}
