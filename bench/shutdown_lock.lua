-- wrk script for bench/shutdown_bench.sh: each request reports a new node
-- running with ~3 KB of outputs, the load that filled ~1 GB of queue in the
-- original incident (before --queue-max-bytes).
local counter = 0
local pad = string.rep("x", 3000)
local id = 0

function setup(thread)
    thread:set("id", id)
    id = id + 1
end

function request()
    counter = counter + 1
    local path = string.format("/runs/sd-%d-%d/nodes/n%d/state", id, counter % 100, counter)
    local body = string.format('{"status":"running","outputs":{"i":%d,"pad":"%s"}}', counter, pad)
    return wrk.format("POST", path, { ["Content-Type"] = "application/json" }, body)
end
