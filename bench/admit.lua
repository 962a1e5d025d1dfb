-- wrk script: POST the recorded 8.7 KB update-deployment AdmissionReview with a fresh request
-- uid each time, so histor records every request instead of deduplicating apiserver retries.
-- Usage: wrk -t2 -c16 -d20s -s bench/admit.lua https://127.0.0.1:8443/admit/bench
local f = assert(io.open(os.getenv("HISTOR_FIXTURE") or "tests/fixtures/admission/admissionreview-update-deployment.json", "r"))
local body = f:read("*a")
f:close()
local uid = "5f7c0deb-38fa-4591-b677-95437ac76d3d"
local first, last = string.find(body, uid, 1, true)
assert(first, "fixture does not contain the expected uid")
local head, tail = string.sub(body, 1, first - 1), string.sub(body, last + 1)
local counter = 0
-- setup() runs in the main Lua state; each thread has its own state, so the id is handed over as
-- a global of the thread's state.
local next_thread = 0

function setup(thread)
  thread:set("thread_id", next_thread)
  next_thread = next_thread + 1
end

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

function request()
  counter = counter + 1
  local id = string.format("%08x-0000-4000-8000-%012x", thread_id or 0, counter)
  return wrk.format(nil, nil, nil, head .. id .. tail)
end
