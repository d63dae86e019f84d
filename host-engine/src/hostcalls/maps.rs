//! Buffers (bodies, configuration, call responses) and header maps, with Envoy's
//! availability rules.

use wasmtime::Linker;

use super::*;

// Buffers

fn buffer_bytes(d: &VmState, t: i32) -> Result<Vec<u8>, Status> {
    match t {
        buffer::HTTP_REQUEST_BODY => Ok(d
            .stream()
            .filter(|s| s.request.body_access)
            .map(|s| s.request.body.clone())
            .unwrap_or_default()),
        buffer::HTTP_RESPONSE_BODY => Ok(d
            .stream()
            .filter(|s| s.response.body_access)
            .map(|s| s.response.body.clone())
            .unwrap_or_default()),
        buffer::HTTP_CALL_RESPONSE_BODY => match &d.call_response {
            Some(r) => Ok(r.body.clone()),
            None => Err(Status::NotFound),
        },
        buffer::GRPC_RECEIVE_BUFFER => match &d.grpc_receive {
            Some(b) => Ok(b.clone()),
            None => Err(Status::NotFound),
        },
        buffer::VM_CONFIGURATION => Ok(d.vm_config.clone()),
        buffer::PLUGIN_CONFIGURATION => Ok(d.plugin_config.clone()),
        buffer::DOWNSTREAM_DATA | buffer::UPSTREAM_DATA | buffer::CALL_DATA => {
            Err(Status::NotFound)
        }
        _ => Err(Status::BadArgument),
    }
}

fn proxy_get_buffer_bytes(
    mut c: C,
    t: i32,
    start: i32,
    max: i32,
    ptr_ptr: i32,
    size_ptr: i32,
) -> R {
    let data = match buffer_bytes(c.data(), t) {
        Ok(d) => d,
        Err(s) => return st(s),
    };
    let (start, max) = (start as u32 as usize, max as u32 as usize);
    if start.checked_add(max).is_none() {
        return st(Status::BadArgument);
    }
    if start >= data.len() || max == 0 {
        // cpp-host returns Ok without writing anything when nothing is left to copy.
        return ok();
    }
    let end = (start + max).min(data.len());
    copy_out(&mut c, &data[start..end], ptr_ptr, size_ptr)
}

/// Envoy's `Buffer::copyFrom` on an HTTP body: start 0 drains `size` bytes from the front and
/// prepends the data (size 0 prepends, a size covering the buffer replaces it, a shorter one
/// replaces that prefix); start at or past the end appends; anything else is BadArgument.
fn splice(buf: &mut Vec<u8>, start: usize, size: usize, data: &[u8]) -> Status {
    if start == 0 {
        // Envoy's `Buffer::copyFrom`: drain `size` bytes (all there are, at most), then prepend.
        let drained = size.min(buf.len());
        buf.splice(..drained, data.iter().copied());
        Status::Ok
    } else if start >= buf.len() {
        buf.extend_from_slice(data);
        Status::Ok
    } else {
        Status::BadArgument
    }
}

fn proxy_set_buffer_bytes(mut c: C, t: i32, start: i32, size: i32, ptr: i32, len: i32) -> R {
    let data = read_or_fail!(&mut c, ptr, len);
    let (start, size) = (start as u32 as usize, size as u32 as usize);
    let d = c.data_mut();
    let status = match t {
        buffer::HTTP_REQUEST_BODY | buffer::HTTP_RESPONSE_BODY => match d.stream_mut() {
            Some(s) => {
                let dir = if t == buffer::HTTP_REQUEST_BODY {
                    &mut s.request
                } else {
                    &mut s.response
                };
                if dir.body_access {
                    splice(&mut dir.body, start, size, &data)
                } else {
                    Status::NotFound
                }
            }
            None => Status::NotFound,
        },
        buffer::HTTP_CALL_RESPONSE_BODY => match d.call_response.as_mut() {
            Some(r) => splice(&mut r.body, start, size, &data),
            None => Status::NotFound,
        },
        // Configuration buffers are immutable.
        buffer::VM_CONFIGURATION | buffer::PLUGIN_CONFIGURATION => Status::BadArgument,
        buffer::DOWNSTREAM_DATA
        | buffer::UPSTREAM_DATA
        | buffer::GRPC_RECEIVE_BUFFER
        | buffer::CALL_DATA => Status::NotFound,
        _ => Status::BadArgument,
    };
    st(status)
}

// Header maps

fn map_read(d: &VmState, t: i32) -> Result<Headers, Status> {
    let stream_map = |access: Access, h: &Headers| -> Result<Headers, Status> {
        match access {
            Access::Unavailable => Err(Status::BadArgument),
            _ => Ok(h.clone()),
        }
    };
    match t {
        map::HTTP_REQUEST_HEADERS
        | map::HTTP_REQUEST_TRAILERS
        | map::HTTP_RESPONSE_HEADERS
        | map::HTTP_RESPONSE_TRAILERS => {
            let Some(s) = d.stream() else {
                return Err(Status::BadArgument);
            };
            match t {
                map::HTTP_REQUEST_HEADERS => {
                    stream_map(s.request.headers_access, &s.request.headers)
                }
                map::HTTP_REQUEST_TRAILERS => {
                    stream_map(s.request.trailers_access, &s.request.trailers)
                }
                map::HTTP_RESPONSE_HEADERS => {
                    stream_map(s.response.headers_access, &s.response.headers)
                }
                _ => stream_map(s.response.trailers_access, &s.response.trailers),
            }
        }
        map::HTTP_CALL_RESPONSE_HEADERS => match &d.call_response {
            Some(r) => Ok(r.headers.clone()),
            None => Err(Status::BadArgument),
        },
        map::HTTP_CALL_RESPONSE_TRAILERS => match &d.call_response {
            Some(r) => Ok(r.trailers.clone()),
            None => Err(Status::BadArgument),
        },
        map::GRPC_RECEIVE_INITIAL_METADATA | map::GRPC_RECEIVE_TRAILING_METADATA => {
            Err(Status::BadArgument)
        }
        _ => Err(Status::BadArgument),
    }
}

/// Applies a change to a header map, with Envoy's availability rules.
fn map_write(d: &mut VmState, t: i32, what: &str, f: impl FnOnce(&mut Headers)) -> Status {
    let Some(s) = d.stream_mut() else {
        return Status::BadArgument;
    };
    let (access, headers) = match t {
        map::HTTP_REQUEST_HEADERS => (s.request.headers_access, &mut s.request.headers),
        map::HTTP_REQUEST_TRAILERS => (s.request.trailers_access, &mut s.request.trailers),
        map::HTTP_RESPONSE_HEADERS => (s.response.headers_access, &mut s.response.headers),
        map::HTTP_RESPONSE_TRAILERS => (s.response.trailers_access, &mut s.response.trailers),
        _ => return Status::BadArgument,
    };
    match access {
        Access::Mutable => {
            f(headers);
            if t == map::HTTP_REQUEST_HEADERS {
                s.request_headers_modified = true;
            }
            Status::Ok
        }
        Access::Late => {
            f(headers);
            s.late_writes.push(what.to_string());
            Status::Ok
        }
        Access::ReadOnly | Access::Unavailable => Status::BadArgument,
    }
}

fn map_name(t: i32) -> &'static str {
    match t {
        map::HTTP_REQUEST_HEADERS => "request headers",
        map::HTTP_REQUEST_TRAILERS => "request trailers",
        map::HTTP_RESPONSE_HEADERS => "response headers",
        map::HTTP_RESPONSE_TRAILERS => "response trailers",
        _ => "map",
    }
}

fn proxy_get_header_map_pairs(mut c: C, t: i32, ptr_ptr: i32, size_ptr: i32) -> R {
    let h = match map_read(c.data(), t) {
        Ok(h) => h,
        Err(s) => return st(s),
    };
    let pairs: Vec<(&[u8], &[u8])> = h.iter_bytes().collect();
    let bytes = abi::serialize_pairs(&pairs);
    copy_out(&mut c, &bytes, ptr_ptr, size_ptr)
}

fn proxy_set_header_map_pairs(mut c: C, t: i32, ptr: i32, len: i32) -> R {
    let data = read_or_fail!(&mut c, ptr, len);
    let Ok(pairs) = abi::deserialize_pairs_raw(&data) else {
        return st(Status::ParseFailure);
    };
    let what = format!("set all {}", map_name(t));
    st(map_write(c.data_mut(), t, &what, |h| {
        *h = Headers::from_pairs(&pairs);
    }))
}

fn proxy_get_header_map_value(
    mut c: C,
    t: i32,
    kp: i32,
    kl: i32,
    ptr_ptr: i32,
    size_ptr: i32,
) -> R {
    let key = read_or_fail!(&mut c, kp, kl);
    let h = match map_read(c.data(), t) {
        Ok(h) => h,
        Err(s) => return st(s),
    };
    match h.get_bytes(&key) {
        Some(v) => {
            let v = v.to_vec();
            copy_out(&mut c, &v, ptr_ptr, size_ptr)
        }
        None => st(Status::NotFound),
    }
}

fn proxy_remove_header_map_value(mut c: C, t: i32, kp: i32, kl: i32) -> R {
    let key = read_or_fail!(&mut c, kp, kl);
    let what = format!("remove {} {}", map_name(t), String::from_utf8_lossy(&key));
    st(map_write(c.data_mut(), t, &what, |h| h.remove(&key)))
}

fn proxy_replace_header_map_value(mut c: C, t: i32, kp: i32, kl: i32, vp: i32, vl: i32) -> R {
    let key = read_or_fail!(&mut c, kp, kl);
    let value = read_or_fail!(&mut c, vp, vl);
    let what = format!(
        "replace {} {}: {}",
        map_name(t),
        String::from_utf8_lossy(&key),
        String::from_utf8_lossy(&value)
    );
    st(map_write(c.data_mut(), t, &what, |h| h.set(&key, &value)))
}

fn proxy_add_header_map_value(mut c: C, t: i32, kp: i32, kl: i32, vp: i32, vl: i32) -> R {
    let key = read_or_fail!(&mut c, kp, kl);
    let value = read_or_fail!(&mut c, vp, vl);
    let what = format!(
        "add {} {}: {}",
        map_name(t),
        String::from_utf8_lossy(&key),
        String::from_utf8_lossy(&value)
    );
    st(map_write(c.data_mut(), t, &what, |h| h.add(&key, &value)))
}

pub(super) fn register(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap("env", "proxy_get_buffer_bytes", proxy_get_buffer_bytes)?;
    l.func_wrap("env", "proxy_set_buffer_bytes", proxy_set_buffer_bytes)?;
    l.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        proxy_get_header_map_pairs,
    )?;
    l.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        proxy_set_header_map_pairs,
    )?;
    l.func_wrap(
        "env",
        "proxy_get_header_map_value",
        proxy_get_header_map_value,
    )?;
    l.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        proxy_remove_header_map_value,
    )?;
    l.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        proxy_replace_header_map_value,
    )?;
    l.func_wrap(
        "env",
        "proxy_add_header_map_value",
        proxy_add_header_map_value,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::splice;
    use crate::abi::Status;

    #[test]
    fn splice_follows_envoys_copy_from() {
        let run = |start, size, data: &[u8]| {
            let mut b = b"hello world".to_vec();
            let s = splice(&mut b, start, size, data);
            (s, String::from_utf8_lossy(&b).into_owned())
        };
        assert_eq!(run(0, 0, b">"), (Status::Ok, ">hello world".into()));
        assert_eq!(run(0, 5, b"HOWDY"), (Status::Ok, "HOWDY world".into()));
        assert_eq!(run(0, 5, b"hi"), (Status::Ok, "hi world".into()));
        assert_eq!(run(0, 11, b"x"), (Status::Ok, "x".into()));
        assert_eq!(run(0, 99, b"x"), (Status::Ok, "x".into()));
        assert_eq!(run(11, 0, b"!"), (Status::Ok, "hello world!".into()));
        assert_eq!(run(3, 2, b"x"), (Status::BadArgument, "hello world".into()));
    }
}
