// Validates Kubernetes manifests against published schemas: the Kubernetes OpenAPI (npm
// kubernetes-models) and the CRD schemas of Gateway API, Istio and GKE (@kubernetes-models/*),
// plus the JSON schemas in this folder (inferencepool-v1.json).
//
//   node validate.mjs < docs.json      docs.json: [{"where": "...", "doc": {...}}, ...]
//
// Prints one JSON line per document: {"where", "ok", "errors": [...]}. Exit 0 when every document
// is valid, 1 otherwise, 2 on bad input.
//
// Besides types, enums, patterns, ranges and required fields (the packages' compiled validators),
// a field the schema does not know is an error, as `kubectl apply` (strict field validation)
// makes it: the validator's reads of the document are recorded through a Proxy, and an object the
// validator looked into but whose key it never read holds an unknown field. Maps (labels,
// matchLabels, data) are enumerated by the validator, so their keys count as read; objects the
// schema leaves open (x-kubernetes-preserve-unknown-fields, e.g. an EnvoyFilter patch value) are
// never looked into and are not judged.
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);

const CORE_GROUPS = new Set(["", "apps", "policy", "rbac.authorization.k8s.io", "batch",
  "networking.k8s.io", "autoscaling"]);
const PACKAGES = {
  "gateway.networking.k8s.io": "@kubernetes-models/gateway-api",
  "networking.istio.io": "@kubernetes-models/istio",
  "extensions.istio.io": "@kubernetes-models/istio",
  "security.istio.io": "@kubernetes-models/istio",
  "telemetry.istio.io": "@kubernetes-models/istio",
  "networking.gke.io": "@kubernetes-models/gke",
};
const LOCAL_SCHEMAS = { "inference.networking.k8s.io/v1/InferencePool": "inferencepool-v1.json" };

async function modelFor(apiVersion, kind) {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  let spec;
  if (CORE_GROUPS.has(group)) spec = `kubernetes-models/${group ? group + "/" : ""}${version}/${kind}`;
  else if (PACKAGES[group]) spec = `${PACKAGES[group]}/${group}/${version}/${kind}`;
  else return null;
  try {
    const mod = await import(spec);
    return mod[kind] ?? null;
  } catch (e) {
    return null;
  }
}

// A Proxy tree over `value` that records, per object, the keys read.
function track(value, seen) {
  if (value === null || typeof value !== "object") return value;
  const reads = new Set();
  let enumerated = false;
  seen.push({ target: value, reads, enumerated: () => enumerated });
  const cache = new Map();
  return new Proxy(value, {
    get(t, k, r) {
      if (typeof k === "string") reads.add(k);
      const v = Reflect.get(t, k, r);
      if (v !== null && typeof v === "object") {
        if (!cache.has(k)) cache.set(k, track(v, seen));
        return cache.get(k);
      }
      return v;
    },
    has(t, k) { if (typeof k === "string") reads.add(k); return Reflect.has(t, k); },
    ownKeys(t) { enumerated = true; return Reflect.ownKeys(t); },
    getOwnPropertyDescriptor(t, k) { return Reflect.getOwnPropertyDescriptor(t, k); },
  });
}

function unknownFields(seen, root) {
  // Paths: rebuild by walking the original document.
  const paths = new Map();
  (function walk(v, p) {
    if (v === null || typeof v !== "object") return;
    paths.set(v, p);
    for (const [k, x] of Object.entries(v)) walk(x, `${p}/${k}`);
  })(root, "");
  const out = [];
  for (const { target, reads, enumerated } of seen) {
    if (Array.isArray(target) || enumerated() || reads.size === 0) continue;
    for (const k of Object.keys(target)) {
      if (!reads.has(k)) out.push(`${paths.get(target) ?? ""}/${k}: unknown field`);
    }
  }
  return out;
}

async function localValidator(file) {
  // JSON Schema (draft 2020-12 subset) validated with Ajv, which @kubernetes-models depends on.
  const Ajv = (await import("ajv/dist/2020.js")).default;
  const ajv = new Ajv({ allErrors: true, strict: false });
  return ajv.compile(JSON.parse(readFileSync(join(here, file), "utf8")));
}

const input = JSON.parse(readFileSync(0, "utf8"));
if (!Array.isArray(input)) { console.error("input must be a JSON list"); process.exit(2); }
let bad = 0;
for (const { where, doc } of input) {
  const errors = [];
  const key = `${doc?.apiVersion}/${doc?.kind}`;
  if (LOCAL_SCHEMAS[key]) {
    const v = await localValidator(LOCAL_SCHEMAS[key]);
    if (!v(doc)) for (const e of v.errors) errors.push(`${e.instancePath} ${e.message}${e.params?.additionalProperty ? ": " + e.params.additionalProperty : ""}`);
  } else {
    const Model = doc && typeof doc === "object" ? await modelFor(String(doc.apiVersion), String(doc.kind)) : null;
    if (!Model) {
      errors.push(`no schema for ${key}`);
    } else {
      const seen = [];
      const proxy = track(doc, seen);
      try {
        Model.prototype.validate.call(proxy);
      } catch (e) {
        for (const x of e.errors ?? []) errors.push(`${x.instancePath} ${x.message}`);
        if (!e.errors) errors.push(String(e.message ?? e));
      }
      errors.push(...unknownFields(seen, doc));
    }
  }
  if (errors.length) bad++;
  console.log(JSON.stringify({ where, ok: errors.length === 0, errors }));
}
process.exit(bad ? 1 : 0);
