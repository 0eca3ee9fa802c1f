// Package natsd runs a NATS server with JetStream inside an mqttinfer
// process: `mqttinfer nats`, and the tests' clusters.
package natsd

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// ServerOptions configure a NATS server with JetStream run inside an
// mqttinfer process (`mqttinfer nats`, and the tests): the same server as
// the nats-server binary, embedded from its Go module.
type ServerOptions struct {
	// Name is the server's name, unique in its cluster.
	Name string
	// Listen is the client listener, host:port (port 0: a free one).
	Listen string
	// ClusterName names the cluster; every node of one cluster has the same.
	ClusterName string
	// ClusterListen is the route listener, host:port; "" runs a single
	// server without a cluster.
	ClusterListen string
	// Routes are the other nodes' route listeners, host:port or
	// nats-route://host:port. A node needs a route to one other node at
	// least; listing all of them lets any one start first.
	Routes []string
	// StoreDir is JetStream's directory.
	StoreDir string
	// MaxStore caps JetStream's file storage, in bytes; 0 lets the server
	// choose (a share of the disk).
	MaxStore int64
	// Log receives the server's notices, warnings and errors; nil discards
	// them.
	Log *slog.Logger
}

// StartServer starts a NATS server with JetStream and waits until it
// accepts clients. In a cluster, JetStream is usable once a majority of
// the nodes have met (WaitJetStream).
func StartServer(o ServerOptions) (*server.Server, error) {
	host, port, err := splitHostPort(o.Listen)
	if err != nil {
		return nil, fmt.Errorf("nats listen address %q: %w", o.Listen, err)
	}
	opts := &server.Options{
		ServerName:        o.Name,
		Host:              host,
		Port:              port,
		JetStream:         true,
		StoreDir:          o.StoreDir,
		JetStreamMaxStore: o.MaxStore,
		NoSigs:            true,
	}
	if o.ClusterListen != "" {
		ch, cp, err := splitHostPort(o.ClusterListen)
		if err != nil {
			return nil, fmt.Errorf("nats cluster address %q: %w", o.ClusterListen, err)
		}
		opts.Cluster = server.ClusterOpts{Name: o.ClusterName, Host: ch, Port: cp}
		for _, r := range o.Routes {
			u, err := routeURL(r)
			if err != nil {
				return nil, err
			}
			opts.Routes = append(opts.Routes, u)
		}
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("nats server: %w", err)
	}
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// The server's fatal errors end its start; they come back as Start's.
	fatal := make(chan string, 1)
	s.SetLoggerV2(slogLogger{log, fatal}, false, false, false)
	go s.Start()
	for deadline := time.Now().Add(10 * time.Second); ; {
		if s.ReadyForConnections(50 * time.Millisecond) {
			return s, nil
		}
		select {
		case msg := <-fatal:
			s.Shutdown()
			return nil, fmt.Errorf("nats server: %s", msg)
		default:
		}
		if time.Now().After(deadline) {
			s.Shutdown()
			return nil, errors.New("nats server: not ready for connections after 10s")
		}
	}
}

// splitHostPort splits host:port; port 0 becomes the server's "pick one" (-1).
func splitHostPort(addr string) (string, int, error) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port %q", p)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	return h, port, nil
}

func routeURL(r string) (*url.URL, error) {
	if _, _, err := net.SplitHostPort(r); err == nil {
		r = "nats-route://" + r
	}
	u, err := url.Parse(r)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("nats route %q: want host:port or nats-route://host:port", r)
	}
	return u, nil
}

// slogLogger is the NATS server's logger on log/slog.
type slogLogger struct {
	l     *slog.Logger
	fatal chan<- string
}

func (s slogLogger) Noticef(format string, v ...any) { s.l.Info(fmt.Sprintf(format, v...)) }
func (s slogLogger) Warnf(format string, v ...any)   { s.l.Warn(fmt.Sprintf(format, v...)) }

func (s slogLogger) Fatalf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	s.l.Error(msg)
	select {
	case s.fatal <- msg:
	default:
	}
}

func (s slogLogger) Errorf(format string, v ...any) { s.l.Error(fmt.Sprintf(format, v...)) }
func (s slogLogger) Debugf(format string, v ...any) { s.l.Debug(fmt.Sprintf(format, v...)) }
func (s slogLogger) Tracef(format string, v ...any) { s.l.Debug(fmt.Sprintf(format, v...)) }
