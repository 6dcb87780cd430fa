# A Rack app that Debian's Puma serves in the tests.
#   RELEASE      names the release; "broken" exits at boot, as a release
#                with a bad config or a missing gem would
#   BROKEN_FILE  if this file exists, exit at boot too (a restart of the
#                same definition that breaks)
#   BOOT_DELAY   seconds the app takes to load before Puma listens
#   GET /?ms=N   answers after N milliseconds: "pid PID release RELEASE"
release = ENV.fetch("RELEASE", "v1")
if release == "broken" || (ENV["BROKEN_FILE"] && File.exist?(ENV["BROKEN_FILE"]))
  warn "boom: release #{release} does not boot"
  exit 3
end
sleep Float(ENV.fetch("BOOT_DELAY", "0"))

run lambda { |env|
  ms = env["QUERY_STRING"].to_s[/(?:\A|&)ms=(\d+)/, 1]
  sleep(ms.to_i / 1000.0) if ms
  [200, { "content-type" => "text/plain" }, ["pid #{Process.pid} release #{release}\n"]]
}
