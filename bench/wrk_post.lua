-- wrk script: POST the bodies WRK_BODY_DIR/image_0.png .. image_{WRK_BODY_COUNT-1}.png in turn, and print a JSON
-- summary with latency percentiles and response counts by status, gathered from every wrk thread.
-- WRK_CONTENT_TYPE (default image/png) and WRK_HEADER_NAME / WRK_HEADER_VALUE (one more header) shape the request.
local directory, count = os.getenv("WRK_BODY_DIR"), tonumber(os.getenv("WRK_BODY_COUNT"))
local bodies = {}
for i = 0, count - 1 do
  local file = assert(io.open(string.format("%s/image_%d.png", directory, i), "rb"))
  bodies[i + 1] = file:read("*all")
  file:close()
end
wrk.method = "POST"
wrk.headers["Content-Type"] = os.getenv("WRK_CONTENT_TYPE") or "image/png"
if os.getenv("WRK_HEADER_NAME") then
  wrk.headers[os.getenv("WRK_HEADER_NAME")] = os.getenv("WRK_HEADER_VALUE")
end

local threads = {}
local next_body = 0

function request()
  next_body = next_body % count + 1
  return wrk.format(nil, nil, nil, bodies[next_body])
end

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(counts) do
    table.insert(parts, string.format('"%d": %d', status, n))
  end
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "socket_errors": %d, "timeouts": %d, ' ..
    '"p50_us": %d, "p95_us": %d, "p99_us": %d, "statuses": {%s}}\n',
    summary.requests, summary.duration,
    summary.errors.connect + summary.errors.read + summary.errors.write, summary.errors.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), table.concat(parts, ", ")))
end
