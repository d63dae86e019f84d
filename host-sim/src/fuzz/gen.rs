//! Case generator: request line, headers, chunking, cancels and the response around a body
//! from [`super::gen_body`].

use super::case::{Bytes, Cancel, Case, GrpcPlan, Pairs};
use super::facts::Facts;
use super::gen_body;
use super::gen_wire::{cuts, pair, random_pairs, shuffle, value_bytes, ENDPOINTS};
use super::rng::Rng;
use super::PUSH_TOKEN;

const TENANTS: &[&str] = &["acme", "team-a", "team-b"];

/// One case. Every choice comes from `rng`, so (seed, index) rebuilds it. `tempo` (the seed
/// modulo 3) sets how fast the simulated clock moves: 0 bursts (rate limits bite), 1 mixes,
/// 2 is slow (refills, stale load snapshots). Bursts send mostly small requests, so that
/// request buckets run out before token buckets.
pub fn case(rng: &mut Rng, facts: &Facts, tempo: u64) -> Case {
    let advance_ms = match (tempo, rng.below(100)) {
        (0, 0) if rng.chance(1, 5) => rng.range(1_000, 20_000),
        (0, _) => rng.below(15),
        (1, 0..=79) => rng.below(50),
        (1, 80..=96) => rng.range(50, 1000),
        (1, 97..=98) => rng.range(2_000, 10_000),
        (1, _) => rng.range(10_000, 120_000),
        (_, 0..=89) => rng.range(100, 3000),
        (_, _) => rng.range(10_000, 120_000),
    };
    let mut c = match (rng.below(100), &facts.push_path) {
        (0..=7, Some(push)) => push_case(rng, push),
        (8..=19, _) => other_case(rng, facts),
        (20..=27, _) => wild_case(rng, facts),
        _ => api_case(rng, facts, if tempo == 0 { 5 } else { 1 }),
    };
    c.advance_ms = advance_ms;
    c.worker = rng.below_usize(2);
    c.cuts = cuts(rng, c.body.0.len());
    if rng.chance(4, 100) {
        let n = 1 + rng.below_usize(3);
        c.trailers = Some(random_pairs(rng, n));
    }
    let chunks = super::case::split_at(&c.body.0, &c.cuts).len();
    c.cancel = match rng.below(100) {
        0..=5 if chunks > 0 => Cancel::MidBody(rng.below_usize(chunks)),
        6..=9 => Cancel::BeforeResponse,
        10..=16 => Cancel::MidResponse(rng.below_usize(4)),
        _ => Cancel::Never,
    };
    if c.response.is_none() && !rng.chance(1, 20) {
        c.response = Some(if tempo == 0 {
            gen_body::cheap_response(rng)
        } else {
            gen_body::response(rng, &c.body.0)
        });
    }
    if rng.chance(3, 10) {
        shuffle(rng, &mut c.headers);
    }
    c.grpc = grpc_plans(rng);
    if rng.chance(1, 20) {
        c.shared = vec![prefix_index_value(rng)];
    }
    c
}

/// A value for one of the first keys of the prefix-affinity index (`endpoints.prefix`):
/// random bytes, or a table of the right version with random entries (too many, sometimes, or
/// a cut one).
fn prefix_index_value(rng: &mut Rng) -> (String, Bytes) {
    let key = format!("llm_router/prefix/{}", rng.below(4));
    let value: Vec<u8> = match rng.below(3) {
        0 => (0..rng.len(100)).map(|_| rng.byte()).collect(),
        _ => {
            let entries = rng.below_usize(18);
            let mut v = vec![1u8];
            v.extend((0..entries * 24).map(|_| rng.byte()));
            if rng.chance(1, 4) {
                v.truncate(rng.below_usize(v.len() + 1));
            }
            v
        }
    };
    (key, Bytes(value))
}

/// Answers for the filter's gRPC calls: response bytes (empty, random, or a small varint
/// field), statuses (defined or not), timeouts.
pub(super) fn grpc_plans(rng: &mut Rng) -> Vec<GrpcPlan> {
    let n = 1 + rng.below_usize(3);
    (0..n)
        .map(|_| match rng.below(10) {
            0..=4 => {
                let bytes = match rng.below(3) {
                    0 => Vec::new(),
                    1 => vec![0x08, rng.byte() & 0x7f],
                    _ => (0..rng.len(64)).map(|_| rng.byte()).collect(),
                };
                GrpcPlan::Ok(Bytes(bytes))
            }
            5..=7 => GrpcPlan::Status {
                code: if rng.chance(9, 10) {
                    rng.below(17) as u32
                } else {
                    rng.next_u64() as u32
                },
                message: Bytes((0..rng.len(24)).map(|_| rng.byte()).collect()),
            },
            _ => GrpcPlan::Timeout,
        })
        .collect()
}

fn base(method: &str, path: Vec<u8>) -> Case {
    Case {
        advance_ms: 0,
        worker: 0,
        method: method.into(),
        path: Bytes(path),
        source: "10.0.0.1:40000".into(),
        headers: Vec::new(),
        body: Bytes::default(),
        cuts: Vec::new(),
        trailers: None,
        cancel: Cancel::Never,
        response: None,
        grpc: Vec::new(),
        shared: Vec::new(),
    }
}

/// `cheap_in_5`: how many API requests in 5 are small and well-formed.
fn api_case(rng: &mut Rng, facts: &Facts, cheap_in_5: u64) -> Case {
    let api = rng.pick(&facts.apis).clone();
    let method = if rng.chance(92, 100) {
        "POST"
    } else {
        rng.pick_copy(&["GET", "PUT", "post", "PATCH", "HEAD", "OPTIONS"])
    };
    let mut c = base(method, path_variant(rng, &api));
    let mut body = if rng.chance(cheap_in_5, 5) {
        gen_body::cheap(rng, &api)
    } else {
        gen_body::request(rng, facts, &api)
    };
    if rng.chance(15, 100) {
        gen_body::mutate(rng, &mut body);
    }
    c.headers = request_headers(rng, facts, body.len());
    c.body = Bytes(body);
    c
}

fn push_case(rng: &mut Rng, push: &str) -> Case {
    let path = if rng.chance(85, 100) {
        push.as_bytes().to_vec()
    } else {
        path_variant(rng, push)
    };
    let mut c = base(if rng.chance(95, 100) { "POST" } else { "GET" }, path);
    c.source = rng
        .pick_copy(&[
            "127.0.0.1:5555",
            "127.0.0.1:5555",
            "127.0.0.1:5555",
            "[::1]:5555",
            "10.0.0.9:1234",
            "127.0.0.2:1",
        ])
        .to_string();
    let auth: Vec<u8> = match rng.below(10) {
        0..=7 => format!("Bearer {PUSH_TOKEN}").into_bytes(),
        8 => b"Bearer wrong".to_vec(),
        _ => value_bytes(rng),
    };
    let mut body = gen_body::push(rng);
    if rng.chance(1, 10) {
        gen_body::mutate(rng, &mut body);
    }
    c.headers.push(pair("authorization", auth));
    c.headers.push(pair("content-type", "application/json"));
    c.headers
        .push(pair("content-length", body.len().to_string()));
    c.body = Bytes(body);
    c
}

fn other_case(rng: &mut Rng, facts: &Facts) -> Case {
    let path: Vec<u8> = rng
        .pick(&[
            "/",
            "/healthz",
            "/v1/models",
            "/v2/chat/completions",
            "/v1/chat",
            "/v1/chat/completionsX",
            "/anything?x=1",
        ])
        .as_bytes()
        .to_vec();
    let method = rng.pick_copy(&["GET", "GET", "POST", "DELETE", "PUT"]);
    let mut c = base(method, path);
    let body = if method == "GET" {
        Vec::new()
    } else {
        gen_body::request(rng, facts, "/v1/chat/completions")
    };
    c.headers = request_headers(rng, facts, body.len());
    c.body = Bytes(body);
    c
}

/// Random method and path bytes.
fn wild_case(rng: &mut Rng, facts: &Facts) -> Case {
    let method = if rng.chance(1, 2) { "POST" } else { "GET" };
    let mut path = if rng.chance(1, 2) {
        let api = rng.pick(&facts.apis).clone();
        path_variant(rng, &api)
    } else {
        b"/".to_vec()
    };
    let extra = value_bytes(rng);
    let at = rng.below_usize(path.len() + 1);
    path.splice(at..at, extra.into_iter().filter(|b| *b != 0));
    let mut c = base(method, path);
    let mut body = gen_body::request(rng, facts, "/v1/completions");
    gen_body::mutate(rng, &mut body);
    c.headers = request_headers(rng, facts, body.len());
    c.body = Bytes(body);
    c
}

/// An API path with normalisation tricks applied.
pub fn path_variant(rng: &mut Rng, api: &str) -> Vec<u8> {
    let mut p = api.as_bytes().to_vec();
    if rng.chance(1, 2) {
        return p;
    }
    for _ in 0..rng.range(1, 3) {
        let slashes: Vec<usize> = (1..p.len()).filter(|&i| p[i] == b'/').collect();
        let at = if slashes.is_empty() {
            p.len()
        } else {
            rng.pick_copy(&slashes)
        };
        let trick: &[u8] = match rng.below(16) {
            0 => b"%2F",
            1 => b"%2f",
            2 => b"%252F",
            3 => b"/",
            4 => b"/.",
            5 => b"/x/..",
            6 => b"/%2e",
            7 => b"/%2E%2E/v1",
            8 => b"\\",
            9 => b";a=b",
            10 => b"/\xff",
            _ => b"",
        };
        match rng.below(16) {
            0..=2 if p.get(at) == Some(&b'/') => {
                p.splice(at..at + 1, trick.iter().copied());
            }
            3..=8 => {
                p.splice(at..at, trick.iter().copied());
            }
            9 => {
                // Percent-encode one letter.
                let letters: Vec<usize> = (0..p.len())
                    .filter(|&i| p[i].is_ascii_alphabetic())
                    .collect();
                if !letters.is_empty() {
                    let i = rng.pick_copy(&letters);
                    let enc = format!("%{:02X}", p[i]).into_bytes();
                    p.splice(i..i + 1, enc);
                }
            }
            10 => p.extend_from_slice(rng.pick_copy(&[
                &b"?a=b"[..],
                b"?",
                b"#frag",
                b"?model=gpt-4o#x",
                b"/",
            ])),
            11 => p = p.to_ascii_uppercase(),
            12 => {
                p.splice(0..0, b"/v1/..".iter().copied());
            }
            13 => {
                p.splice(0..0, b"/".iter().copied());
            }
            14 => p.extend_from_slice(b"%00"),
            _ => p.extend_from_slice(b"?\xa1\xb1"),
        }
    }
    p
}

fn request_headers(rng: &mut Rng, facts: &Facts, body_len: usize) -> Pairs {
    let mut h: Pairs = Vec::new();
    match rng.below(20) {
        0..=16 => h.push(pair("content-type", "application/json")),
        17 => {}
        _ => h.push(pair(
            "content-type",
            rng.pick(&[&b"text/plain"[..], b"APPLICATION/JSON; charset=\xa1", b""]),
        )),
    }
    // Envoy delivers exactly `content-length` bytes (or resets the stream), so the header is
    // either right or absent (a chunked request).
    if rng.chance(9, 10) {
        h.push(pair("content-length", body_len.to_string()));
    }
    if let Some(th) = &facts.tenant_header {
        match rng.below(20) {
            0..=13 => h.push(pair(th, rng.pick(TENANTS))),
            14..=15 => {}
            16 => {
                h.push(pair(th, rng.pick(TENANTS)));
                h.push(pair(th, rng.pick(TENANTS)));
            }
            17 => h.push(pair(th, format!("t-{}", rng.below(5000)))),
            _ => h.push(pair(th, value_bytes(rng))),
        }
    }
    for (name, value) in &facts.rule_headers {
        if rng.chance(1, 8) {
            let v: Vec<u8> = match rng.below(4) {
                0..=1 => value.as_bytes().to_vec(),
                2 => value.to_ascii_uppercase().into_bytes(),
                _ => value_bytes(rng),
            };
            h.push(pair(name, v));
        }
    }
    spoof(rng, facts, &mut h);
    if rng.chance(1, 5) {
        h.push(pair("user-agent", b"Mozilla/5.0 \xa1\xb1"));
    }
    let extra = match rng.below(20) {
        0..=7 => 0,
        8..=15 => rng.range(1, 5),
        16..=18 => rng.range(5, 100),
        _ => rng.range(100, 300),
    };
    h.extend(random_pairs(rng, extra as usize));
    h
}

/// Client values for the filter's own headers: plausible ones (configured tiers and models,
/// pushed endpoints, numbers) and garbage, sometimes repeated, sometimes in upper case.
fn spoof(rng: &mut Rng, facts: &Facts, h: &mut Pairs) {
    let tiers: Vec<String> = facts.tiers.iter().cloned().collect();
    let models: Vec<String> = facts.models.iter().flatten().cloned().collect();
    for name in facts.owned() {
        if !rng.chance(1, 4) {
            continue;
        }
        for _ in 0..if rng.chance(1, 5) { 2 } else { 1 } {
            let v: Vec<u8> = match (rng.below(6), name.as_str()) {
                (0, _) => value_bytes(rng),
                (1, _) => b"spoofed".to_vec(),
                _ if name == facts.tier_header && !tiers.is_empty() => {
                    rng.pick(&tiers).as_bytes().to_vec()
                }
                _ if name == facts.model_header && !models.is_empty() => {
                    rng.pick(&models).as_bytes().to_vec()
                }
                _ if name == facts.endpoint_header => rng
                    .pick(&[ENDPOINTS[0], ENDPOINTS[2], "6.6.6.6:666", "127.0.0.1:9901"])
                    .as_bytes()
                    .to_vec(),
                _ => rng
                    .pick(&["0", "1", "999999999999", "-5", "1e9"])
                    .as_bytes()
                    .to_vec(),
            };
            let shown = if rng.chance(1, 4) {
                name.to_ascii_uppercase()
            } else {
                name.clone()
            };
            h.push(pair(&shown, v));
        }
    }
}
