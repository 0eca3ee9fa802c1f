// Command mqttinfer is an MQTT-based AI inference service for IoT devices.
//
//	mqttinfer serve    embedded broker + in-process workers + HTTP (the default node)
//	mqttinfer worker   a remote worker on any broker (shared subscription) or in a cluster
//	mqttinfer nats     a NATS server with JetStream, a node of a cluster's backbone
//	mqttinfer sim      simulated devices and a load report
//	mqttinfer watch    result traffic, readably
//	mqttinfer models   the model catalog
//	mqttinfer chat     ask the chat model, answer streamed over MQTT
//	mqttinfer mcp      the Model Context Protocol on stdio, for LLM hosts
//	mqttinfer passwd   add or change a user of the credentials file
//	mqttinfer version  the version
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/mqttinfer/mqttinfer/mcpserver"
	"github.com/mqttinfer/mqttinfer/service"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	reexecWithStackGODEBUG(os.Args)
	service.Version = version
	mcpserver.Version = version
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := rootCmd().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "mqttinfer:", err)
		stop()
		os.Exit(1)
	}
}

// rootCmd is the mqttinfer command with every subcommand.
func rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "mqttinfer",
		Short:         "MQTT-based AI inference service for IoT devices",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(serveCmd(), workerCmd(), natsCmd(), simCmd(), watchCmd(), modelsCmd(), chatCmd(), mcpCmd(), passwdCmd(), versionCmd())
	return root
}

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), "mqttinfer", version)
		},
	}
}
