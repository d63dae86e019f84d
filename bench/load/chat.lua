-- wrk script of the llm-router load benchmark (scripts/bench.sh).
--
--   wrk ... -s bench/load/chat.lua http://127.0.0.1:PORT -- PROMPT_BYTES [TENANTS] [PATH]
--
-- POSTs an OpenAI chat completion request to PATH (default /v1/chat/completions): a system
-- message and a user message whose content is about PROMPT_BYTES of English prose (default
-- 1024), `max_tokens` 256, not streamed. Requests rotate over TENANTS tenant ids in `x-tenant-id` (default 8), so
-- a gateway with tenant limits updates several buckets. The requests are built once, in
-- init(), and reused: wrk's own cost per request stays small and equal for every variant.
--
-- done() prints one machine-readable line for bench.sh:
--   WRK requests=N duration_us=N non2xx=N errors=N p50_us=N p90_us=N p99_us=N mean_us=N bytes=N

local sentences = {
  "Customer reports that the monthly invoice was charged twice on the same card.",
  "The first charge went through at the start of the billing cycle and the second one three days later.",
  "Support already confirmed with the payment provider that both transactions settled.",
  "The account is on the team plan with twelve seats, two of which were removed last week.",
  "Please check whether the seat change could have triggered a second, prorated invoice.",
  "If it did, explain the prorated amount in plain words and say whether a refund is due.",
  "The customer asked for a short answer they can forward to their finance department.",
  "Keep the tone polite, avoid internal jargon, and mention the ticket number at the end.",
}

local function prompt_text(bytes)
  local parts, n, i = {}, 0, 0
  while n < bytes do
    local s = sentences[(i % #sentences) + 1]
    if i % 5 == 4 then s = s .. "\\n" end -- a paragraph break now and then (JSON-escaped)
    parts[#parts + 1] = s
    n = n + #s + 1
    i = i + 1
  end
  return table.concat(parts, " ")
end

local requests = {}
local next_req = 0

function init(args)
  local prompt_bytes = tonumber(args[1] or "1024")
  local tenants = tonumber(args[2] or "8")
  local path = args[3] or "/v1/chat/completions"
  local body = '{"model":"gpt-4o-mini","messages":['
    .. '{"role":"system","content":"You are a concise assistant for a billing support team."},'
    .. '{"role":"user","content":"' .. prompt_text(prompt_bytes) .. '"}],'
    .. '"max_tokens":256,"temperature":0.2,"stream":false}'
  for t = 1, tenants do
    local headers = {
      ["Content-Type"] = "application/json",
      ["Authorization"] = "Bearer sk-bench",
      ["x-tenant-id"] = "team-" .. t,
    }
    requests[t] = wrk.format("POST", path, headers, body)
  end
end

function request()
  next_req = next_req % #requests + 1
  return requests[next_req]
end

function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    "WRK requests=%d duration_us=%d non2xx=%d errors=%d p50_us=%d p90_us=%d p99_us=%d mean_us=%d bytes=%d\n",
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean,
    summary.bytes))
end
