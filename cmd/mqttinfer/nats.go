package main

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/mqttinfer/mqttinfer/cluster/natsd"
)

func natsCmd() *cobra.Command {
	var o natsd.ServerOptions
	var routes, logLevel string
	cmd := &cobra.Command{
		Use:   "nats",
		Short: "Run a NATS server with JetStream (a node of the cluster's backbone)",
		Long: `Run a NATS server with JetStream, embedded from the nats-server Go module:
the backbone of an mqttinfer cluster ('serve --cluster' edges and
'worker --cluster' workers connect to it). Three of them, routed to each
other, make a cluster whose streams survive the loss of any one:

  mqttinfer nats --name n1 --listen 127.0.0.1:4222 --cluster-listen 127.0.0.1:6222 --routes 127.0.0.1:6223,127.0.0.1:6224
  mqttinfer nats --name n2 --listen 127.0.0.1:4223 --cluster-listen 127.0.0.1:6223 --routes 127.0.0.1:6222,127.0.0.1:6224
  mqttinfer nats --name n3 --listen 127.0.0.1:4224 --cluster-listen 127.0.0.1:6224 --routes 127.0.0.1:6222,127.0.0.1:6223

Any NATS server 2.11 or later with JetStream does as well (nats-server -js).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("--log-level: %w", err)
			}
			o.Log = slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: lvl})).With("nats", o.Name)
			if routes != "" {
				o.Routes = strings.Split(routes, ",")
			}
			if o.StoreDir == "" {
				o.StoreDir = filepath.Join(os.TempDir(), "mqttinfer-nats-"+o.Name)
			}
			s, err := natsd.StartServer(o)
			if err != nil {
				return err
			}
			o.Log.Info("nats serving", "clients", s.ClientURL(), "cluster", o.ClusterListen, "store", o.StoreDir)
			<-cmd.Context().Done()
			s.Shutdown()
			s.WaitForShutdown()
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Name, "name", "n1", "server name, unique in the cluster")
	f.StringVar(&o.Listen, "listen", "127.0.0.1:4222", "client listen address, host:port")
	f.StringVar(&o.ClusterName, "cluster-name", "mqttinfer", "cluster name, the same on every node")
	f.StringVar(&o.ClusterListen, "cluster-listen", "", "route listen address, host:port (\"\" = a single server)")
	f.StringVar(&routes, "routes", "", "route addresses of the other nodes, comma-separated host:port")
	f.StringVar(&o.StoreDir, "store-dir", "", "JetStream directory (default $TMPDIR/mqttinfer-nats-<name>)")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn or error")
	return cmd
}
