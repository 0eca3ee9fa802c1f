module github.com/mochi-mqtt/server/v2

go 1.21

require (
	github.com/cockroachdb/pebble v1.1.5
	github.com/gorilla/websocket v1.5.3
	github.com/rs/xid v1.4.0
	gopkg.in/yaml.v3 v3.0.1
)
