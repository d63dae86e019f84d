//! Property test (seeded, bounded): random mutations of a valid configuration never make
//! parsing panic; a refused one names a field; an accepted one only holds label values,
//! header names and paths that pass their checks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use super::tests::SPEC_EXAMPLE;
use super::*;
use crate::metrics::{label_value_problem, Catalog};
use crate::testutil::Rng;
use serde_json::{json, Value};

const TOP_LEVEL: [&str; 13] = [
    "apis",
    "max_body_bytes",
    "on_invalid_body",
    "headers",
    "tiers",
    "default_tier",
    "rules",
    "models",
    "tenants",
    "endpoints",
    "inject_stream_usage",
    "trace_properties",
    "(root)",
];

fn hostile_value(rng: &mut Rng) -> Value {
    let strings = [
        "",
        "a;b",
        "a=b",
        ".=",
        "x y",
        "tab\t",
        "nul\u{0}",
        "caf\u{e9}",
        "x-tenant-id",
        "x-llm-model-type",
        ":path",
        "/v1//x",
        "/v1/%2e",
        "large",
        "small",
        "default",
        "overflow",
        "-1",
        "1e400",
    ];
    match rng.below(12) {
        0 => Value::Null,
        1 => json!(rng.chance(50)),
        2 => json!(-1),
        3 => json!(u64::MAX),
        4 => json!(1.5),
        5 => json!(f64::MAX),
        6 => json!([]),
        7 => json!({}),
        8 => json!("z".repeat(rng.below(2000))),
        9 => json!([rng.pick(&strings).to_string()]),
        _ => json!(rng.pick(&strings).to_string()),
    }
}

/// Every (pointer) path of objects and arrays in `v`.
fn paths(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                paths(c, p, out);
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                paths(c, p, out);
            }
        }
        _ => {}
    }
}

fn mutate(rng: &mut Rng, v: &mut Value) {
    let mut all = Vec::new();
    paths(v, String::new(), &mut all);
    let path = rng.pick(&all).clone();
    let (parent, key) = path.rsplit_once('/').unwrap();
    let key = key.replace("~1", "/").replace("~0", "~");
    let value = hostile_value(rng);
    let Some(target) = v.pointer_mut(parent) else {
        return;
    };
    match target {
        Value::Object(m) => match rng.below(4) {
            0 => {
                m.remove(&key);
            }
            1 => {
                // rename the key (tiers, tenants, splits are keyed by name)
                if let Some(old) = m.remove(&key) {
                    let Value::String(name) = hostile_value(rng) else {
                        return;
                    };
                    m.insert(name, old);
                }
            }
            2 => {
                m.insert("bogus_field".into(), value);
            }
            _ => {
                m.insert(key, value);
            }
        },
        Value::Array(a) => {
            let i: usize = key.parse().unwrap();
            match rng.below(3) {
                0 => {
                    a.remove(i);
                }
                1 => a.push(value),
                _ => a[i] = value,
            }
        }
        _ => {}
    }
}

fn check_accepted(c: &Config) {
    let catalog = Catalog::from_config(c);
    for v in catalog
        .tiers
        .iter()
        .chain(&catalog.models)
        .chain(&catalog.tenants)
    {
        assert_eq!(label_value_problem(v), None, "{v:?} became a label");
    }
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
            })
    };
    for h in c.headers.owned() {
        assert!(token(h), "{h:?}");
    }
    if let Some(TenantSource::Header(h)) = c.tenants.as_ref().map(|t| &t.source) {
        assert!(
            token(h) && !c.headers.owned().contains(&h.as_str()),
            "{h:?}"
        );
    }
    for r in &c.rules {
        if let Some((name, _)) = &r.header {
            assert!(token(name) && !c.headers.owned().contains(&name.as_str()));
        }
    }
    for p in c
        .apis
        .iter()
        .chain(c.rules.iter().filter_map(|r| r.path_prefix.as_ref()))
    {
        assert!(p.starts_with('/') && !p.contains("//") && !p.contains(['%', '?', ' ']));
    }
}

#[test]
fn random_mutations_of_a_valid_config() {
    let mut rng = Rng::new(0x5EED_0030);
    let base: Value = serde_json::from_str(SPEC_EXAMPLE).unwrap();
    let (mut accepted, mut refused) = (0, 0);
    for iter in 0..crate::testutil::iters(3000) {
        let mut v = base.clone();
        for _ in 0..1 + rng.below(3) {
            mutate(&mut rng, &mut v);
        }
        let mut text = v.to_string().into_bytes();
        if rng.chance(15) && !text.is_empty() {
            let i = rng.below(text.len());
            text[i] = *rng.pick(b"{}[]\",:;= \x00\xff");
        }
        match Config::parse(&text) {
            Ok(c) => {
                accepted += 1;
                check_accepted(&c);
            }
            Err(e) => {
                refused += 1;
                assert!(!e.field.is_empty() && !e.reason.is_empty(), "iter {iter}");
                let head = e.field.split(['.', '[']).next().unwrap();
                assert!(
                    TOP_LEVEL.contains(&head) || e.reason.starts_with("unknown field"),
                    "iter {iter}: error names no field: {e}"
                );
                assert!(!e.to_string().contains(char::is_control), "{e:?}");
                assert!(e.to_string().len() < 1200, "{e}");
                assert!(e.to_string().contains(&e.field));
            }
        }
    }
    assert!(accepted > 100 && refused > 100, "{accepted} {refused}");
}
