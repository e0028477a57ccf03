-- wrk script: every connection posts node lifecycles (scheduled, running,
-- completed) over many distinct nodes, JSON bodies, keep-alive.
--
--   wrk -t2 -c64 -d10s --latency -s bench/http_lifecycle.lua http://HOST:PORT [-- RUNS]
--
-- Node ids are "t<thread>-n<counter>" (thread ids come from setup(), so they
-- are distinct across threads), run ids "bench-<counter % RUNS>" (RUNS
-- defaults to 16).
--
-- wrk does not tell a script which connection a response belongs to, so the
-- next step of a node is taken from the response body (the node state the
-- server returns holds run_id, node_id and status): a 2xx for "scheduled"
-- queues the node's "running", a 2xx for "running" queues its "completed".
-- request() serves queued steps first and starts a new node only when none
-- is waiting, so one node's updates are always sent one after the other,
-- each after the previous one was answered.
--
-- done() prints, on lines starting with "lifecycle ":
--   responses_2xx  2xx answers received
--   non_2xx        other answers, by status
--   nodes_started  nodes whose "scheduled" got a 2xx
--   nodes_completed nodes whose "completed" got a 2xx (fully posted)
--   nodes_partial  started but not completed: cut by the end of the run or by
--                  a non-2xx answer in the middle
-- Requests still in flight when wrk stops are never answered to the script;
-- the server may still have accepted them (at most one per connection).

local threads = {}
local next_id = 0

function setup(thread)
   next_id = next_id + 1
   thread:set("id", next_id)
   table.insert(threads, thread)
end

-- Per-thread state (each wrk thread has its own Lua state).
local runs = 16
local counter = 0
local q_run, q_node, q_status = {}, {}, {}
local q_head, q_tail = 1, 0
local headers = { ["Content-Type"] = "application/json",
                  ["Connection"] = "keep-alive" }
local bodies = {
   scheduled = '{"status":"scheduled"}',
   running   = '{"status":"running"}',
   completed = '{"status":"completed"}',
}
local following = { scheduled = "running", running = "completed" }

responses_2xx = 0
nodes_started = 0
nodes_completed = 0
unparsed_2xx = 0
non_2xx = {}

function init(args)
   if args[1] ~= nil then
      runs = tonumber(args[1]) or runs
   end
end

function request()
   local run, node, status
   if q_head <= q_tail then
      run, node, status = q_run[q_head], q_node[q_head], q_status[q_head]
      q_run[q_head], q_node[q_head], q_status[q_head] = nil, nil, nil
      q_head = q_head + 1
   else
      counter = counter + 1
      run = "bench-" .. (counter % runs)
      node = "t" .. id .. "-n" .. counter
      status = "scheduled"
   end
   return wrk.format("POST", "/runs/" .. run .. "/nodes/" .. node .. "/state",
                     headers, bodies[status])
end

function response(status, hdrs, body)
   if status < 200 or status > 299 then
      local key = tostring(status)
      non_2xx[key] = (non_2xx[key] or 0) + 1
      return
   end
   responses_2xx = responses_2xx + 1
   local run = body:match('"run_id":"([^"]*)"')
   local node = body:match('"node_id":"([^"]*)"')
   local st = body:match('"status":"([^"]*)"')
   if run == nil or node == nil or st == nil then
      unparsed_2xx = unparsed_2xx + 1
      return
   end
   if st == "scheduled" then
      nodes_started = nodes_started + 1
   elseif st == "completed" then
      nodes_completed = nodes_completed + 1
   end
   local nxt = following[st]
   if nxt ~= nil then
      q_tail = q_tail + 1
      q_run[q_tail], q_node[q_tail], q_status[q_tail] = run, node, nxt
   end
end

function done(summary, latency, requests)
   local ok, started, completed, unparsed = 0, 0, 0, 0
   local bad, bad_total = {}, 0
   for _, t in ipairs(threads) do
      ok = ok + t:get("responses_2xx")
      started = started + t:get("nodes_started")
      completed = completed + t:get("nodes_completed")
      unparsed = unparsed + t:get("unparsed_2xx")
      for code, n in pairs(t:get("non_2xx")) do
         bad[code] = (bad[code] or 0) + n
         bad_total = bad_total + n
      end
   end
   local parts = {}
   for code, n in pairs(bad) do
      parts[#parts + 1] = code .. ":" .. n
   end
   table.sort(parts)
   io.write(string.format("lifecycle responses_2xx %d\n", ok))
   io.write(string.format("lifecycle non_2xx %d %s\n", bad_total,
                          #parts > 0 and table.concat(parts, ",") or "-"))
   io.write(string.format("lifecycle unparsed_2xx %d\n", unparsed))
   io.write(string.format("lifecycle nodes_started %d\n", started))
   io.write(string.format("lifecycle nodes_completed %d\n", completed))
   io.write(string.format("lifecycle nodes_partial %d\n", started - completed))
end
