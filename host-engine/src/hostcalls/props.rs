//! Properties, shared data (Envoy's CAS rules) and shared queues.

use wasmtime::Linker;

use super::*;

// Properties

fn walk_json<'a>(v: &'a serde_json::Value, path: &[&str]) -> Option<&'a serde_json::Value> {
    let mut cur = v;
    for seg in path {
        cur = match cur {
            serde_json::Value::Object(m) => m.get(*seg)?,
            serde_json::Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

pub(crate) fn lookup_property(d: &VmState, path: &[u8]) -> Option<Vec<u8>> {
    let stream = d.stream();
    if let Some(v) = stream.and_then(|s| s.properties.get(path)) {
        return Some(v.encode());
    }
    let shared = lock(&d.shared);
    if let Some(v) = shared.properties.get(path) {
        return Some(v.encode());
    }
    let text = String::from_utf8_lossy(path).into_owned();
    let segs: Vec<&str> = text.split('\0').collect();
    match segs.as_slice() {
        ["plugin_name"] => return Some(shared.plugin_name.as_bytes().to_vec()),
        ["plugin_root_id"] => return Some(shared.root_id.as_bytes().to_vec()),
        ["plugin_vm_id"] => return Some(shared.vm_id.as_bytes().to_vec()),
        _ => {}
    }
    drop(shared);
    let s = stream?;
    let req = &s.request.headers;
    let header = |name: &str| req.get_bytes(name).map(<[u8]>::to_vec);
    let path_part = |query: bool| {
        req.get_bytes(":path").map(|p| {
            let q = p.iter().position(|&b| b == b'?').unwrap_or(p.len());
            if query {
                p.get(q + 1..).unwrap_or_default().to_vec()
            } else {
                p[..q].to_vec()
            }
        })
    };
    match segs.as_slice() {
        ["request", "path"] => header(":path"),
        ["request", "url_path"] => path_part(false),
        ["request", "query"] => path_part(true),
        ["request", "method"] => header(":method"),
        ["request", "host"] => header(":authority"),
        ["request", "scheme"] => header(":scheme"),
        ["request", "id"] => header("x-request-id"),
        ["request", "useragent"] => header("user-agent"),
        ["request", "referer"] => header("referer"),
        ["request", "headers", name] => header(name),
        ["response", "code"] => s.response_code.map(|c| PropValue::Int(c as i64).encode()),
        ["response", "headers", name] => s.response.headers.get_bytes(name).map(<[u8]>::to_vec),
        ["metadata", "filter_metadata", filter, rest @ ..] => {
            let root = s.filter_metadata.get(*filter)?;
            walk_json(root, rest).map(|v| PropValue::from_json(v).encode())
        }
        _ => None,
    }
}

fn proxy_get_property(mut c: C, pp: i32, pl: i32, ptr_ptr: i32, size_ptr: i32) -> R {
    let path = read_or_fail!(&mut c, pp, pl);
    // Some SDKs end the path with a NUL; it is not part of the last segment.
    let path: &[u8] = path.strip_suffix(&[0]).unwrap_or(&path);
    match lookup_property(c.data(), path) {
        Some(v) => copy_out(&mut c, &v, ptr_ptr, size_ptr),
        None => st(Status::NotFound),
    }
}

fn proxy_set_property(mut c: C, pp: i32, pl: i32, vp: i32, vl: i32) -> R {
    let path = read_or_fail!(&mut c, pp, pl);
    let value = read_or_fail!(&mut c, vp, vl);
    let d = c.data_mut();
    match d.stream_mut() {
        Some(s) => {
            s.properties.insert(path, PropValue::Bytes(value));
        }
        None => {
            lock(&d.shared)
                .properties
                .insert(path, PropValue::Bytes(value));
        }
    }
    ok()
}

// Shared data and queues

fn proxy_get_shared_data(
    mut c: C,
    kp: i32,
    kl: i32,
    ptr_ptr: i32,
    size_ptr: i32,
    cas_ptr: i32,
) -> R {
    let key = str_or_fail!(&mut c, kp, kl);
    let found = {
        let s = lock(&c.data().shared);
        s.shared_data.get(&(s.vm_id.clone(), key)).cloned()
    };
    let Some((value, cas)) = found else {
        return st(Status::NotFound);
    };
    let r = copy_out(&mut c, &value, ptr_ptr, size_ptr)?;
    if r != 0 {
        return Ok(r);
    }
    if !write_u32(&mut c, cas_ptr, cas) {
        return st(Status::InvalidMemoryAccess);
    }
    ok()
}

fn proxy_set_shared_data(mut c: C, kp: i32, kl: i32, vp: i32, vl: i32, cas: i32) -> R {
    let key = str_or_fail!(&mut c, kp, kl);
    let value = read_or_fail!(&mut c, vp, vl);
    let mut s = lock(&c.data().shared);
    let k = (s.vm_id.clone(), key);
    let cas = cas as u32;
    if let Some((_, current)) = s.shared_data.get(&k) {
        if cas != 0 && cas != *current {
            return st(Status::CasMismatch);
        }
    }
    let next = s.next_cas();
    s.shared_data.insert(k, (value, next));
    ok()
}

fn proxy_register_shared_queue(mut c: C, np: i32, nl: i32, ret: i32) -> R {
    let name = str_or_fail!(&mut c, np, nl);
    let (worker, root) = (c.data().worker, c.data().root_context);
    let token = {
        let mut s = lock(&c.data().shared);
        let key = (s.vm_id.clone(), name);
        let token = match s.queue_tokens.get(&key) {
            Some(t) => *t,
            None => {
                let t = s.next_queue_token;
                s.next_queue_token += 1;
                s.queue_tokens.insert(key, t);
                t
            }
        };
        // As in cpp-host, the last registrant receives the notifications.
        let q = s
            .queues
            .entry(token)
            .or_insert_with(|| crate::state::Queue {
                owner_worker: worker,
                owner_context: root,
                items: Default::default(),
            });
        q.owner_worker = worker;
        q.owner_context = root;
        token
    };
    if !write_u32(&mut c, ret, token) {
        return st(Status::InvalidMemoryAccess);
    }
    ok()
}

fn proxy_resolve_shared_queue(mut c: C, vp: i32, vl: i32, np: i32, nl: i32, ret: i32) -> R {
    let vm_id = str_or_fail!(&mut c, vp, vl);
    let name = str_or_fail!(&mut c, np, nl);
    let token = lock(&c.data().shared)
        .queue_tokens
        .get(&(vm_id, name))
        .copied();
    match token {
        Some(t) => {
            if !write_u32(&mut c, ret, t) {
                return st(Status::InvalidMemoryAccess);
            }
            ok()
        }
        None => st(Status::NotFound),
    }
}

fn proxy_dequeue_shared_queue(mut c: C, token: i32, ptr_ptr: i32, size_ptr: i32) -> R {
    let item = {
        let mut s = lock(&c.data().shared);
        match s.queues.get_mut(&(token as u32)) {
            None => return st(Status::NotFound),
            Some(q) => q.items.pop_front(),
        }
    };
    match item {
        None => st(Status::Empty),
        Some(v) => copy_out(&mut c, &v, ptr_ptr, size_ptr),
    }
}

fn proxy_enqueue_shared_queue(mut c: C, token: i32, vp: i32, vl: i32) -> R {
    let value = read_or_fail!(&mut c, vp, vl);
    let mut s = lock(&c.data().shared);
    let token = token as u32;
    let Some(q) = s.queues.get_mut(&token) else {
        return st(Status::NotFound);
    };
    q.items.push_back(value);
    let (w, ctx) = (q.owner_worker, q.owner_context);
    s.queue_ready.push_back((w, ctx, token));
    ok()
}

pub(super) fn register(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap("env", "proxy_get_property", proxy_get_property)?;
    l.func_wrap("env", "proxy_set_property", proxy_set_property)?;
    l.func_wrap("env", "proxy_get_shared_data", proxy_get_shared_data)?;
    l.func_wrap("env", "proxy_set_shared_data", proxy_set_shared_data)?;
    l.func_wrap(
        "env",
        "proxy_register_shared_queue",
        proxy_register_shared_queue,
    )?;
    l.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        proxy_resolve_shared_queue,
    )?;
    l.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        proxy_dequeue_shared_queue,
    )?;
    l.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        proxy_enqueue_shared_queue,
    )?;
    Ok(())
}
