package config

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"net"
	"net/url"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mqttinfer/mqttinfer/topics"
)

// MaxPacketSizeLimit is the largest packet MQTT can express (256 MiB - 1).
const MaxPacketSizeLimit = 268435455

// maxSessionExpiry is the largest session expiry MQTT 5 can express, in seconds.
const maxSessionExpiry = math.MaxUint32 * time.Second

// Validate checks every option and returns all problems joined with
// errors.Join, each naming the key and the bad value.
//
// knownModels lists the model names that costs may name: pass every model
// this binary knows of, loaded on this machine or not, so that one file works
// on every node. A nil knownModels skips the model-name check.
func (c Config) Validate(knownModels []string) error {
	var errs []error
	bad := func(key string, val any, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s = %s: %s", key, show(val), fmt.Sprintf(format, args...)))
	}

	if err := topics.ValidID(c.Node); err != nil {
		bad("node", c.Node, "%v", err)
	}
	if err := topics.ValidPrefix(c.Prefix); err != nil {
		bad("prefix", c.Prefix, "%v", err)
	}
	if _, ok := logLevels[c.LogLevel]; !ok {
		bad("log_level", c.LogLevel, "must be one of debug, info, warn, error")
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		bad("log_format", c.LogFormat, "must be text or json")
	}

	// Listeners.
	addrs := []struct{ key, val string }{
		{"mqtt.tcp_addr", c.MQTT.TCPAddr}, {"mqtt.ws_addr", c.MQTT.WSAddr}, {"mqtt.tls_addr", c.MQTT.TLSAddr}, {"http.addr", c.HTTP.Addr},
	}
	used := map[string]string{}
	for _, a := range addrs {
		if a.val == "" {
			continue
		}
		if err := checkAddr(a.val); err != nil {
			bad(a.key, a.val, "%v", err)
			continue
		}
		if _, port, _ := net.SplitHostPort(a.val); port != "0" {
			if other, dup := used[a.val]; dup {
				bad(a.key, a.val, "the same address as %s", other)
			}
			used[a.val] = a.key
		}
	}

	m := c.MQTT
	switch {
	case m.MaxPacketSize <= 0:
		bad("mqtt.max_packet_size", m.MaxPacketSize, "must be greater than 0 bytes")
	case m.MaxPacketSize > MaxPacketSizeLimit:
		bad("mqtt.max_packet_size", m.MaxPacketSize, "must be at most %d bytes, the MQTT limit", MaxPacketSizeLimit)
	}
	switch {
	case m.MaxRequestSize <= 0:
		bad("mqtt.max_request_size", m.MaxRequestSize, "must be greater than 0 bytes")
	case m.MaxRequestSize > m.MaxPacketSize && m.MaxPacketSize > 0:
		bad("mqtt.max_request_size", m.MaxRequestSize, "must be at most mqtt.max_packet_size (%d bytes)", m.MaxPacketSize)
	}
	if m.MaxClientWritesPending <= 0 || m.MaxClientWritesPending > math.MaxInt32 {
		bad("mqtt.max_client_writes_pending", m.MaxClientWritesPending, "must be 1..%d messages", math.MaxInt32)
	}
	if m.MaxClients < 0 {
		bad("mqtt.max_clients", m.MaxClients, "must be 0 (unlimited) or more")
	}
	switch {
	case m.SessionExpiry < time.Second:
		bad("mqtt.session_expiry", m.SessionExpiry, "must be at least 1s")
	case m.SessionExpiry > maxSessionExpiry:
		bad("mqtt.session_expiry", m.SessionExpiry, "must be at most %v, the MQTT limit", maxSessionExpiry)
	}

	// TLS.
	tc := c.TLS
	switch {
	case tc.CertFile != "" && tc.KeyFile == "":
		bad("tls.key_file", tc.KeyFile, "must be set with tls.cert_file")
	case tc.CertFile == "" && tc.KeyFile != "":
		bad("tls.cert_file", tc.CertFile, "must be set with tls.key_file")
	}
	if tc.CertFile == "" && m.TLSAddr != "" {
		bad("mqtt.tls_addr", m.TLSAddr, "needs tls.cert_file (and tls.key_file)")
	}
	if tc.CertFile == "" && tc.ClientCAFile != "" {
		bad("tls.client_ca_file", tc.ClientCAFile, "needs tls.cert_file: client certificates are asked for by the TLS listeners")
	}
	if tc.Identity != "cn" && tc.Identity != "san" {
		bad("tls.identity", tc.Identity, "must be cn or san")
	}
	if m.MaxKeepAlive < 0 || m.MaxKeepAlive > 65535*time.Second || m.MaxKeepAlive%time.Second != 0 {
		bad("mqtt.max_keepalive", m.MaxKeepAlive, "must be whole seconds from 0 (no cap) to 65535s")
	}
	if c.Auth.Enabled && c.Auth.CredentialsFile == "" {
		bad("auth.credentials_file", c.Auth.CredentialsFile, "must be set when auth.enabled is true")
	}

	// Throttling.
	t := c.Throttle
	if !(t.Rate > 0) || math.IsInf(t.Rate, 0) {
		bad("throttle.rate", t.Rate, "must be a number greater than 0 (tokens per second)")
	}
	if t.Burst < 1 {
		bad("throttle.burst", t.Burst, "must be at least 1 token")
	}
	if t.MaxInFlight < 1 {
		bad("throttle.max_in_flight", t.MaxInFlight, "must be at least 1 request")
	}
	positive(bad, "throttle.idle_ttl", t.IdleTTL)
	for i, o := range t.Overrides {
		k := fmt.Sprintf("throttle.overrides[%d]", i)
		if o.Pattern == "" {
			bad(k+".pattern", o.Pattern, "must not be empty (use \"*\" for every device)")
		} else if _, err := path.Match(o.Pattern, ""); err != nil {
			bad(k+".pattern", o.Pattern, "not a path.Match pattern: %v", err)
		}
		if o.Rate < 0 || math.IsNaN(o.Rate) || math.IsInf(o.Rate, 0) {
			bad(k+".rate", o.Rate, "must be 0 (inherit throttle.rate) or a number greater than 0")
		}
		if o.Burst < 0 {
			bad(k+".burst", o.Burst, "must be 0 (inherit throttle.burst) or more")
		}
		if o.MaxInFlight < 0 {
			bad(k+".max_in_flight", o.MaxInFlight, "must be 0 (inherit throttle.max_in_flight) or more")
		}
		errs = append(errs, checkCosts(k+".costs", o.Costs, knownModels)...)
	}
	errs = append(errs, checkCosts("models.costs", c.Models.Costs, knownModels)...)
	if c.Throttle.Enabled || c.Remote.Throttle {
		errs = append(errs, c.checkCostsFit()...)
	}

	// In-process workers.
	w := c.Worker
	if w.Concurrency < 0 {
		bad("worker.concurrency", w.Concurrency, "must be 0 (2 × GOMAXPROCS) or more")
	}
	if w.QueueSize < 1 {
		bad("worker.queue_size", w.QueueSize, "must be at least 1 request")
	}
	positive(bad, "worker.default_deadline", w.DefaultDeadline)
	positive(bad, "worker.max_deadline", w.MaxDeadline)
	if w.DefaultDeadline > 0 && w.MaxDeadline > 0 && w.MaxDeadline < w.DefaultDeadline {
		bad("worker.max_deadline", w.MaxDeadline, "must be at least worker.default_deadline (%v)", w.DefaultDeadline)
	}

	// Remote workers.
	r := c.Remote
	if len(r.Brokers()) == 0 {
		bad("remote.broker", r.Broker, "%v", checkBrokerURL(""))
	}
	for _, u := range r.Brokers() {
		if err := checkBrokerURL(u); err != nil {
			bad("remote.broker", r.Broker, "%v", err)
		}
	}
	if err := topics.ValidID(r.Group); err != nil {
		bad("remote.group", r.Group, "%v", err)
	}
	if r.ClientID != "" {
		if err := topics.ValidID(r.ClientID); err != nil {
			bad("remote.client_id", r.ClientID, "%v", err)
		}
	}
	if r.Password != "" && r.Username == "" {
		errs = append(errs, errors.New("remote.password is set but remote.username is empty: MQTT 3.1.1 sends a password only with a username"))
	}
	if r.Concurrency < 0 {
		bad("remote.concurrency", r.Concurrency, "must be 0 (2 × GOMAXPROCS) or more")
	}
	positive(bad, "remote.dedup_ttl", r.DedupTTL)
	if r.MQTTVersion != "5" && r.MQTTVersion != "3.1.1" {
		bad("remote.mqtt_version", r.MQTTVersion, "must be 5 or 3.1.1")
	}
	// The worker's listener is in another process than serve's, so it may
	// repeat one of their addresses.
	if r.HTTPAddr != "" {
		if err := checkAddr(r.HTTPAddr); err != nil {
			bad("remote.http_addr", r.HTTPAddr, "%v", err)
		}
	}
	errs = append(errs, r.checkTLS()...)

	// Cluster.
	cl := c.Cluster
	for _, u := range splitURLs(cl.URL) {
		if err := checkNATSURL(u); err != nil {
			bad("cluster.url", cl.URL, "%v", err)
		}
	}
	if cl.Partitions < 1 || cl.Partitions > 1024 {
		bad("cluster.partitions", cl.Partitions, "must be 1 to 1024")
	}
	if cl.Replicas != 0 && cl.Replicas != 1 && cl.Replicas != 3 && cl.Replicas != 5 {
		bad("cluster.replicas", cl.Replicas, "must be 0 (automatic), 1, 3 or 5")
	}
	positive(bad, "cluster.result_ttl", cl.ResultTTL)
	positive(bad, "cluster.dedup_window", cl.DedupWindow)
	if cl.MaxQueued < 1 {
		bad("cluster.max_queued", cl.MaxQueued, "must be at least 1")
	}

	// Models.
	if c.Models.Anomaly.MaxSeries < 1 {
		bad("models.anomaly.max_series", c.Models.Anomaly.MaxSeries, "must be at least 1")
	}
	positive(bad, "models.anomaly.idle_ttl", c.Models.Anomaly.IdleTTL)
	if c.Models.Dir == "" {
		bad("models.dir", c.Models.Dir, "must not be empty")
	}
	if c.Models.Repository != "" {
		if st, err := os.Stat(c.Models.Repository); err != nil || !st.IsDir() {
			bad("models.repository", c.Models.Repository, "is not a directory")
		}
	}
	positive(bad, "models.repository_poll", c.Models.RepositoryPoll)
	if c.Models.Threads < 1 {
		bad("models.threads", c.Models.Threads, "must be at least 1 thread")
	}
	if c.Models.VAD.MaxStreams < 1 {
		bad("models.vad.max_streams", c.Models.VAD.MaxStreams, "must be at least 1")
	}
	positive(bad, "models.vad.idle_ttl", c.Models.VAD.IdleTTL)
	if c.Models.OCR.MaxPixels < 1 {
		bad("models.ocr.max_pixels", c.Models.OCR.MaxPixels, "must be at least 1 pixel")
	}
	if c.Models.Detect.MaxPixels < 1 {
		bad("models.detect.max_pixels", c.Models.Detect.MaxPixels, "must be at least 1 pixel")
	}
	if c.Models.Detect.MaxBatch < 1 {
		bad("models.detect.max_batch", c.Models.Detect.MaxBatch, "must be at least 1 image")
	}
	if ch := c.Models.Chat; ch.BaseURL != "" {
		if u, err := url.Parse(ch.BaseURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("models.chat.base_url", ch.BaseURL, "must be an http:// or https:// URL with a host")
		}
		if ch.Model == "" {
			bad("models.chat.model", ch.Model, "must be set when models.chat.base_url is")
		}
	}
	positive(bad, "models.chat.timeout", c.Models.Chat.Timeout)
	positive(bad, "models.chat.idle_timeout", c.Models.Chat.IdleTimeout)
	if c.Models.Chat.MaxTokens < 1 {
		bad("models.chat.max_tokens", c.Models.Chat.MaxTokens, "must be at least 1 token")
	}
	if c.Models.Chat.Cost < 1 {
		bad("models.chat.cost", c.Models.Chat.Cost, "must be at least 1 token")
	}
	for _, ms := range []struct {
		key  string
		size int
	}{
		{"models.vad.max_request_size", c.Models.VAD.MaxRequestSize},
		{"models.ocr.max_request_size", c.Models.OCR.MaxRequestSize},
		{"models.detect.max_request_size", c.Models.Detect.MaxRequestSize},
	} {
		switch {
		case ms.size <= 0:
			bad(ms.key, ms.size, "must be greater than 0 bytes")
		case ms.size > m.MaxPacketSize && m.MaxPacketSize > 0:
			bad(ms.key, ms.size, "must be at most mqtt.max_packet_size (%d bytes)", m.MaxPacketSize)
		}
	}
	if c.Models.Detect.MaxDelay < 0 {
		bad("models.detect.max_delay", c.Models.Detect.MaxDelay, "must not be negative")
	}

	return errors.Join(errs...)
}

func positive(bad func(string, any, string, ...any), key string, d time.Duration) {
	if d <= 0 {
		bad(key, d, "must be a duration greater than 0, like \"5s\"")
	}
}

// show formats a value for an error message: strings quoted, durations with units.
func show(v any) string {
	switch v := v.(type) {
	case string:
		return strconv.Quote(v)
	case time.Duration:
		return strconv.Quote(v.String())
	}
	return fmt.Sprint(v)
}

// checkAddr checks a listener address: host:port with a numeric port 0..65535.
func checkAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("not host:port: %w", err)
	}
	if strings.ContainsAny(host, " /") {
		return fmt.Errorf("host %q is not a host name or IP address", host)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("port %q must be a number 0..65535", port)
	}
	return nil
}

// brokerSchemes are the URL schemes paho.mqtt.golang dials.
var brokerSchemes = []string{"tcp", "mqtt", "ssl", "tls", "mqtts", "mqtt+ssl", "tcps", "ws", "wss", "unix"}

func checkBrokerURL(s string) error {
	if s == "" {
		return errors.New("must be set, like \"tcp://127.0.0.1:1883\"")
	}
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("not a URL: %w", err)
	}
	if !slices.Contains(brokerSchemes, u.Scheme) {
		return fmt.Errorf("scheme %q is not one of %s (write it like tcp://host:1883)", u.Scheme, strings.Join(brokerSchemes, ", "))
	}
	switch u.Scheme {
	case "unix":
		if u.Path == "" && u.Host == "" {
			return errors.New("unix:// needs a socket path")
		}
	case "ws", "wss":
		if u.Hostname() == "" {
			return errors.New("has no host")
		}
	default:
		if u.Hostname() == "" || u.Port() == "" {
			return fmt.Errorf("needs a host and a port, like %s://127.0.0.1:1883", u.Scheme)
		}
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("port %q must be a number 1..65535", p)
		}
	}
	return nil
}

// checkCosts checks a model → tokens map: known models, costs of at least 1 token.
func checkCosts(key string, costs map[string]int, known []string) []error {
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(costs)) {
		if known != nil && !slices.Contains(known, name) {
			msg := fmt.Sprintf("unknown model %q in %s (known: %s)", name, key, knownList(known))
			for _, k := range known {
				if strings.EqualFold(k, name) {
					msg += fmt.Sprintf("; keys are read in lower case, so %q cannot be configured in a file", k)
				}
			}
			errs = append(errs, errors.New(msg))
		}
		if costs[name] < 1 {
			errs = append(errs, fmt.Errorf("%s[%s] = %d: a cost must be at least 1 token", key, name, costs[name]))
		}
	}
	return errs
}

func knownList(known []string) string {
	if len(known) == 0 {
		return "none"
	}
	return strings.Join(slices.Sorted(slices.Values(known)), ", ")
}

// checkCostsFit reports costs that exceed the burst of the devices they
// apply to: such a request could never be allowed.
func (c Config) checkCostsFit() []error {
	var errs []error
	burst := c.Throttle.Burst
	if burst < 1 {
		return nil // reported already
	}
	for _, name := range slices.Sorted(maps.Keys(c.Models.Costs)) {
		if cost := c.Models.Costs[name]; cost > burst {
			errs = append(errs, fmt.Errorf("models.costs[%s] = %d: more than throttle.burst (%d), so such a request would never be allowed", name, cost, burst))
		}
	}
	for i, o := range c.Throttle.Overrides {
		b, from := burst, "throttle.burst"
		if o.Burst > 0 {
			b, from = o.Burst, fmt.Sprintf("throttle.overrides[%d].burst", i)
		}
		for _, name := range slices.Sorted(maps.Keys(o.Costs)) {
			if cost := o.Costs[name]; cost > b {
				errs = append(errs, fmt.Errorf("throttle.overrides[%d].costs[%s] = %d: more than %s (%d), so such a request would never be allowed", i, name, cost, from, b))
			}
		}
		if o.Burst <= 0 {
			continue
		}
		for _, name := range slices.Sorted(maps.Keys(c.Models.Costs)) {
			if _, own := o.Costs[name]; own {
				continue
			}
			if cost := c.Models.Costs[name]; cost > o.Burst {
				errs = append(errs, fmt.Errorf("models.costs[%s] = %d: more than throttle.overrides[%d].burst (%d), so devices matching %q could never make such a request", name, cost, i, o.Burst, o.Pattern))
			}
		}
	}
	return errs
}

// splitURLs splits a comma-separated list of URLs, dropping blanks.
func splitURLs(s string) []string {
	var out []string
	for _, u := range strings.Split(s, ",") {
		if u = strings.TrimSpace(u); u != "" {
			out = append(out, u)
		}
	}
	return out
}

// SplitURLs splits a comma-separated list of URLs (cluster.url, and the
// brokers of remote.broker), dropping blanks.
func SplitURLs(s string) []string { return splitURLs(s) }

// checkNATSURL checks one NATS server URL: nats:// or tls:// with a host and a port.
func checkNATSURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("not a URL: %w", err)
	}
	if u.Scheme != "nats" && u.Scheme != "tls" {
		return fmt.Errorf("%q: scheme %q is not nats or tls (write it like nats://127.0.0.1:4222)", s, u.Scheme)
	}
	if u.Hostname() == "" || u.Port() == "" {
		return fmt.Errorf("%q needs a host and a port, like nats://127.0.0.1:4222", s)
	}
	return nil
}
