// Command caddy is Caddy with the supervise app built in: what
// `xcaddy build --with github.com/caddy-supervise/supervise` generates.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	// plug in Caddy modules here
	_ "github.com/caddy-supervise/supervise"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

func main() {
	caddycmd.Main()
}
