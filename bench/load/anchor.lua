-- The Lua anchor of the load benchmark (scripts/bench.sh, variant L): the least a body-reading
-- router does, written the cheap way, to compare the filter against. For every request:
--   * the whole body (Envoy buffers it: handle:body());
--   * the model by a pattern match on the raw text (no JSON parsing, no unescaping);
--   * a length rule: about 4 bytes per token, large tier from 1024 tokens (the shipped rule);
--   * the tier written into x-llm-model-type, and the route matched again.
-- It is not a router (hostile bodies fool it); it is the floor a real one is measured against.

local LARGE_MODELS = { ["gpt-4o"] = true, ["large"] = true }
local LARGE_FROM_BYTES = 4 * 1024

function envoy_on_request(handle)
  handle:headers():remove("x-llm-model-type")
  if handle:headers():get(":method") ~= "POST" then
    return
  end
  -- Waits for the whole body; header objects taken before it are out of scope after it.
  local body = handle:body()
  local tier = "small"
  if body ~= nil then
    local n = body:length()
    local text = body:getBytes(0, n)
    local model = string.match(text, '"model"%s*:%s*"([^"]*)"')
    if (model and LARGE_MODELS[model]) or n >= LARGE_FROM_BYTES then
      tier = "large"
    end
  end
  handle:headers():replace("x-llm-model-type", tier)
  handle:clearRouteCache()
end
