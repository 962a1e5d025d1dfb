-- wrk script: POST the recorded 8.7 KB update-deployment AdmissionReview as a new change each time:
-- a fresh request uid and a fresh base resourceVersion (oldObject's, as the next real update of
-- the object would have), so histor records every request instead of taking it for a retry or for
-- another webhook's call of the same change (which it dedupes by a fingerprint of the request).
-- Usage: wrk -t2 -c16 -d20s -s bench/admit.lua https://127.0.0.1:8443/admit/bench
local f = assert(io.open(os.getenv("HISTOR_FIXTURE") or "tests/fixtures/admission/admissionreview-update-deployment.json", "r"))
local body = f:read("*a")
f:close()

local function split(s, sep)
  local out, i = {}, 1
  while true do
    local a, b = string.find(s, sep, i, true)
    if not a then
      table.insert(out, string.sub(s, i))
      return out
    end
    table.insert(out, string.sub(s, i, a - 1))
    i = b + 1
  end
end

local uid = "5f7c0deb-38fa-4591-b677-95437ac76d3d"
local rv = '"resourceVersion": "197"'
assert(string.find(body, uid, 1, true), "fixture does not contain the expected uid")
assert(string.find(body, rv, 1, true), "fixture does not contain the expected resourceVersion")
-- Text pieces with markers between them: "\0U" for the uid, "\0R" for the resourceVersion.
local marked = table.concat(split(table.concat(split(body, uid), "\0U\0"), rv), "\0R\0")
local parts = split(marked, "\0")

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
  local t = thread_id or 0
  local id = string.format("%08x-0000-4000-8000-%012x", t, counter)
  local version = string.format('"resourceVersion": "%d%09d"', t + 1, counter)
  local out = {}
  for _, p in ipairs(parts) do
    if p == "U" then
      table.insert(out, id)
    elseif p == "R" then
      table.insert(out, version)
    else
      table.insert(out, p)
    end
  end
  return wrk.format(nil, nil, nil, table.concat(out))
end
