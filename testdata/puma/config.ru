# A Rack app that Debian's Puma serves in the tests.
#   RELEASE      names the release; "broken" exits at boot, as a release
#                with a bad config or a missing gem would
#   BROKEN_FILE  if this file exists, exit at boot too (a restart of the
#                same definition that breaks)
#   BOOT_DELAY   seconds the app takes to load before Puma listens
#   FAIL_RATE    the share of requests (0 to 1, spread evenly) the release
#                answers with 500 once it serves: a release that boots and
#                answers its readiness probe (GET /?probe) but fails on real
#                traffic
#   FAIL_FILE    if this file exists at boot, FAIL_RATE is 1 (a restart of
#                the same definition that fails every request)
#   HANG         "1": requests other than the probes never get an answer
#                (a release that deadlocks on real traffic)
#   GET /up      the readiness path: never fails
#   GET /?ms=N   answers after N milliseconds: "pid PID release RELEASE path PATH"
release = ENV.fetch("RELEASE", "v1")
if release == "broken" || (ENV["BROKEN_FILE"] && File.exist?(ENV["BROKEN_FILE"]))
  warn "boom: release #{release} does not boot"
  exit 3
end
sleep Float(ENV.fetch("BOOT_DELAY", "0"))

fail_rate = Float(ENV.fetch("FAIL_RATE", "0"))
fail_rate = 1.0 if ENV["FAIL_FILE"] && File.exist?(ENV["FAIL_FILE"])
served = 0
lock = Mutex.new

run lambda { |env|
  query = env["QUERY_STRING"].to_s
  ms = query[/(?:\A|&)ms=(\d+)/, 1]
  sleep(ms.to_i / 1000.0) if ms
  probe = query == "probe" || env["PATH_INFO"] == "/up"
  sleep if ENV["HANG"] == "1" && !probe
  if fail_rate > 0 && !probe
    fail = lock.synchronize { served += 1; (served * fail_rate).floor > ((served - 1) * fail_rate).floor }
    return [500, { "content-type" => "text/plain" }, ["pid #{Process.pid} release #{release} failed\n"]] if fail
  end
  [200, { "content-type" => "text/plain" }, ["pid #{Process.pid} release #{release} path #{env["PATH_INFO"]}\n"]]
}
