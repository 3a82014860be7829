-- wrk request mix for `cargo xtask bench pipeline`: the traffic whose ring-buffer records are
-- recorded and replayed. 40 tenants, five route shapes with ids (auto-templated by the agent),
-- a query string, 503s and 404s, and a W3C traceparent on every third request.
local n = 0
local paths = {
  "/api/items/%d", "/api/users/%d/orders", "/api/orders/%d?expand=items", "/api/fail/%d",
  "/missing/%d",
}
request = function()
  n = n + 1
  local headers = {
    ["X-Tenant-ID"] = "tenant-" .. (n % 40),
    ["User-Agent"] = "wrk/bench",
    ["Accept"] = "application/json",
  }
  if n % 3 == 0 then
    headers["traceparent"] = string.format("00-%032x-%016x-01", n, n)
  end
  return wrk.format("GET", string.format(paths[(n % 5) + 1], n % 997), headers)
end
