-- wrk script for bench overload: each connection posts the images WRK_BODY_DIR/image_I.png in turn, waiting
-- WRK_DELAY_MS between its requests (so 64 connections offer about 64000 / WRK_DELAY_MS requests a second while
-- the service keeps up), tags each request X-Request-ID: img-I, and checks the answer's class against
-- WRK_LABELS (comma-separated, image order). done() prints a JSON summary, with the share of requests answered
-- within WRK_SLO_MS read off the latency distribution.
local directory, count = os.getenv("WRK_BODY_DIR"), tonumber(os.getenv("WRK_BODY_COUNT"))
local pause, slo_us = tonumber(os.getenv("WRK_DELAY_MS")), tonumber(os.getenv("WRK_SLO_MS")) * 1000
local labels = {}
for label in string.gmatch(os.getenv("WRK_LABELS"), "[^,]+") do
  table.insert(labels, tonumber(label))
end
local bodies = {}
for i = 0, count - 1 do
  local file = assert(io.open(string.format("%s/image_%d.png", directory, i), "rb"))
  bodies[i + 1] = file:read("*all")
  file:close()
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "image/png"

local threads = {}
local next_body = 0

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses, right, judged = {}, 0, 0
end

function delay()
  return pause
end

function request()
  next_body = next_body % count + 1
  wrk.headers["X-Request-ID"] = "img-" .. next_body
  return wrk.format(nil, nil, nil, bodies[next_body])
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 200 then
    local image = tonumber(string.match(headers["x-request-id"] or headers["X-Request-ID"] or "", "img%-(%d+)"))
    local predicted = tonumber(string.match(body, '"prediction":{"class_id":(%d+)'))
    if image and predicted then
      judged = judged + 1
      if predicted == labels[image] then
        right = right + 1
      end
    end
  end
end

function done(summary, latency, requests)
  local counts, total_right, total_judged = {}, 0, 0
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + n
    end
    total_right = total_right + thread:get("right")
    total_judged = total_judged + thread:get("judged")
  end
  local parts = {}
  for status, n in pairs(counts) do
    table.insert(parts, string.format('"%d": %d', status, n))
  end
  local within = 0
  for p = 999, 0, -1 do  -- percentile(100) is not the maximum in every wrk build
    if latency:percentile(p / 10) <= slo_us then
      within = p / 10
      break
    end
  end
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "within_slo_percent": %.1f, ' ..
    '"right": %d, "judged": %d, "statuses": {%s}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), within,
    total_right, total_judged, table.concat(parts, ", ")))
end
