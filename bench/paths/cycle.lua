-- wrk script for the paths benchmark: POST the bodies of a file (one JSON body a line) in turn, so a path
-- whose text must be new on every request gets one; print one JSON line at the end, as post.lua does.
-- WRK_BODIES is the file; WRK_AUTH, when set, the Authorization header's value.
local requests = {}
local count = 0
local position = 0

init = function(args)
  local headers = {["Content-Type"] = "application/json"}
  local auth = os.getenv("WRK_AUTH")
  if auth ~= nil and auth ~= "" then
    headers["Authorization"] = auth
  end
  for line in io.lines(os.getenv("WRK_BODIES")) do
    if line ~= "" then
      count = count + 1
      requests[count] = wrk.format("POST", nil, headers, line)
    end
  end
end

request = function()
  position = position % count + 1
  return requests[position]
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"errors":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
