# A Rails 6.1 app in one file (Debian's ruby-railties): a real Rails stack,
# Rack::Sendfile included, for the tests of `caddy supervise`.
#   BOOT_DELAY  seconds the app takes to boot
#   GET /            "hello from rails VERSION pid PID"
#   GET /up          200 once booted (the health check)
#   GET /report      send_file of files/report.txt: with X-Sendfile-Type, an
#                    empty body and an X-Sendfile header
#   GET /blob        send_file of $BLOB_FILE (application/octet-stream)
#   GET /uploads/ID  send_file of the upload stored in $UPLOADS_DIR/ID, under
#                    the name its user gave it (whatever bytes that holds)
#   GET /big         a 240 kB text page
#   GET /slow?ms=N   answers after N milliseconds
#   GET /headers     the request headers the app got, one per line
#   GET /sse         server-sent events (ActionController::Live): "data: pid PID n N" every 200 ms
#   WS  /cable       Action Cable; PidChannel transmits {"pid": PID} on subscribe and on "whoami"
require "action_controller/railtie"
require "action_cable/engine"

sleep Float(ENV.fetch("BOOT_DELAY", "0"))

class TestApp < Rails::Application
  config.root = File.expand_path("..", __dir__)
  config.eager_load = false
  config.secret_key_base = "0" * 64
  config.hosts.clear
  config.logger = Logger.new($stdout)
  config.log_level = :info
  config.public_file_server.enabled = false # Caddy serves public/
  # Rack 2.2.22 (Debian's, a security fix) no longer takes the type from
  # the request's X-Sendfile-Type header: the app names it, as a Rails 8
  # app's production.rb does behind Thruster
  config.action_dispatch.x_sendfile_header = "X-Sendfile"
  config.action_cable.cable = { "adapter" => "async" }
  config.action_cable.disable_request_forgery_protection = true
  routes.append do
    get "/" => "pages#index"
    get "/up" => "pages#up"
    get "/report" => "pages#report"
    get "/blob" => "pages#blob"
    get "/uploads/:id" => "pages#upload", constraints: { id: /\d+/ }
    get "/big" => "pages#big"
    get "/slow" => "pages#slow"
    get "/headers" => "pages#request_headers"
    get "/sse" => "events#index"
  end
end

class PagesController < ActionController::Base
  def index
    render plain: "hello from rails #{Rails.version} pid #{Process.pid}\n"
  end

  def up
    head :ok
  end

  def report
    send_file Rails.root.join("files", "report.txt"), type: "text/plain", disposition: "attachment"
  end

  def blob
    send_file ENV.fetch("BLOB_FILE"), type: "application/octet-stream"
  end

  def upload
    dir = File.join(ENV.fetch("UPLOADS_DIR"), params[:id])
    send_file File.join(dir, Dir.children(dir).first), type: "application/octet-stream", disposition: "attachment"
  end

  def big
    render plain: "lorem ipsum dolor sit amet " * 9_000
  end

  def slow
    sleep params.fetch(:ms, 20).to_i / 1000.0
    render plain: "slow pid #{Process.pid}\n"
  end

  def request_headers
    lines = request.headers.env.select { |k, _| k.start_with?("HTTP_") }.map { |k, v| "#{k}: #{v}" }
    render plain: lines.sort.join("\n") + "\n"
  end
end

class EventsController < ActionController::Base
  include ActionController::Live

  def index
    response.headers["Content-Type"] = "text/event-stream"
    response.headers["Cache-Control"] = "no-cache"
    # Rack 2.2's ETag middleware buffers a body without Last-Modified
    response.headers["Last-Modified"] = Time.now.httpdate
    n = 0
    loop do
      response.stream.write("data: pid #{Process.pid} n #{n}\n\n")
      n += 1
      sleep 0.2
    end
  rescue ActionController::Live::ClientDisconnected, IOError
    # the client left
  ensure
    response.stream.close
  end
end

module ApplicationCable
  class Connection < ActionCable::Connection::Base; end
  class Channel < ActionCable::Channel::Base; end
end

class PidChannel < ApplicationCable::Channel
  def subscribed
    transmit({ "pid" => Process.pid })
  end

  def whoami(_data)
    transmit({ "pid" => Process.pid })
  end
end
