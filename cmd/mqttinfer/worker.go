package main

import (
	"github.com/spf13/cobra"

	"github.com/mqttinfer/mqttinfer/config"
	"github.com/mqttinfer/mqttinfer/service"
)

func workerCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "worker",
		Short: "Run a remote worker on any MQTT broker (shared subscription)",
		Long: `Run a remote worker: it connects to --broker, takes requests through the
shared subscription $share/<group>/<prefix>/+/req/+/+ and publishes results.
Against the embedded broker of 'mqttinfer serve --in-process=false' the broker
checks identity and throttles; on any other broker (Mosquitto, EMQX, HiveMQ)
pass --throttle so that the worker throttles each device itself, with the
--throttle-* limits.

Its client id is <prefix>-worker-<random> unless --client-id says otherwise.
For a broker with a private CA or one that wants a client certificate, give
--ca-file, --cert-file and --key-file (PEM) with an ssl://, mqtts:// or wss://
broker URL. --http-addr serves /metrics, /healthz and /readyz.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			return service.RunWorker(cmd.Context(), cfg, cfg.Logger(cmd.ErrOrStderr()))
		},
	}
	config.BindFlags(cmd.Flags(), config.WorkerCmd)
	return cmd
}
