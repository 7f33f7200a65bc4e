-- wrk script: POST invert.json as a job, each with its own Idempotency-Key.
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("thread_id", threads)
end

local f = io.open(os.getenv("WORKFLOW") or "examples/workflows/invert.json", "r")
local workflow = f:read("*a")
f:close()
wrk.method = "POST"
-- NO_METADATA=1 leaves out the label (comfy-api-proxy 0.1.6 takes `metadata` only as a string).
if os.getenv("NO_METADATA") == "1" then
  wrk.body = '{"workflow": ' .. workflow .. '}'
else
  wrk.body = '{"workflow": ' .. workflow .. ', "metadata": {"bench": "submit"}}'
end
wrk.headers["Content-Type"] = "application/json"
local counter = 0
local run = tostring(os.time())
request = function()
  counter = counter + 1
  wrk.headers["Idempotency-Key"] = string.format("bench-%s-%d-%d", run, thread_id or 0, counter)
  return wrk.format(nil, "/api/v2/jobs")
end

local statuses = {}
response = function(status)
  statuses[status] = (statuses[status] or 0) + 1
end
