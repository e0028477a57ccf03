-- wrk script: posts node lifecycles (scheduled, running, completed) over many
-- distinct nodes, JSON bodies, keep-alive.
--
--   wrk -t2 -c64 -d10s --latency -s bench/http_lifecycle.lua http://HOST:PORT [-- RUNS [QUERY]]
--
-- QUERY (e.g. "wait=true") is appended to every POST's path.
--
-- Each thread walks its nodes in phases of W: "scheduled" for nodes
-- [b, b+W), then "running" for the same W, then "completed", then the next
-- block. A wrk thread has at most one request in flight per connection, so
-- with fewer connections per thread than W a node's previous step was always
-- answered before the next one is sent: lifecycles arrive in order without
-- reading any response. There is deliberately no response() function: with
-- one, wrk hands every body to Lua, and on a 2-core machine that load
-- generator cost is taken from the server being measured.
--
-- Node ids are "t<thread>-n<index>", run ids "bench-<index % RUNS>" (RUNS
-- defaults to 16). done() prints, on lines starting with "lifecycle ", what
-- the threads SENT (answers are not read): requests_sent, nodes_started
-- (scheduled sent), nodes_completed (completed sent). Up to one request per
-- connection is still unanswered when wrk stops, so the server may be behind
-- these by at most the connection count.

local W = 4096
local threads = {}
local next_id = 0

function setup(thread)
   next_id = next_id + 1
   thread:set("id", next_id)
   table.insert(threads, thread)
end

-- Per-thread state (each wrk thread has its own Lua state).
runs = 16
query = ""
counter = 0
local headers = { ["Content-Type"] = "application/json" }
local bodies = {
   '{"status":"scheduled"}',
   '{"status":"running"}',
   '{"status":"completed"}',
}

function init(args)
   if args[1] ~= nil then
      runs = tonumber(args[1]) or runs
   end
   if args[2] ~= nil and args[2] ~= "" then
      query = "?" .. args[2]
   end
end

function request()
   local k = counter
   counter = counter + 1
   local block = math.floor(k / (3 * W))
   local within = k % (3 * W)
   local phase = math.floor(within / W) + 1
   local node = block * W + within % W
   return wrk.format("POST", "/runs/bench-" .. (node % runs) .. "/nodes/t" .. id ..
                     "-n" .. node .. "/state" .. query, headers, bodies[phase])
end

-- Nodes whose step `phase` (1, 2, 3) was sent among the first k requests.
local function sent(k, phase)
   local full = math.floor(k / (3 * W))
   local rest = k % (3 * W) - (phase - 1) * W
   return full * W + math.max(0, math.min(rest, W))
end

function done(summary, latency, requests)
   local total, started, completed = 0, 0, 0
   for _, t in ipairs(threads) do
      local k = t:get("counter")
      total = total + k
      started = started + sent(k, 1)
      completed = completed + sent(k, 3)
   end
   io.write(string.format("lifecycle requests_sent %d\n", total))
   io.write(string.format("lifecycle nodes_started %d\n", started))
   io.write(string.format("lifecycle nodes_completed %d\n", completed))
end
