package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/mqttinfer/mqttinfer/config"
	"github.com/mqttinfer/mqttinfer/service"
)

// shutdownGrace bounds a graceful stop: queued and running requests get this
// long to finish before their models are canceled.
const shutdownGrace = 15 * time.Second

// loadConfig loads and validates the effective configuration of a command.
func loadConfig(cmd *cobra.Command) (config.Config, error) {
	cfg, err := config.Load(cmd.Flags())
	if err != nil {
		return cfg, err
	}
	if err := cfg.Validate(service.KnownModels()); err != nil {
		return cfg, fmt.Errorf("invalid configuration:\n%w", err)
	}
	return cfg, nil
}

func serveCmd() *cobra.Command {
	var printConfig bool
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the service: embedded MQTT broker, in-process workers, HTTP",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			if printConfig {
				out, err := cfg.YAML()
				if err != nil {
					return err
				}
				_, err = cmd.OutOrStdout().Write(out)
				return err
			}
			log := cfg.Logger(cmd.ErrOrStderr())
			svc, err := service.New(cfg, log)
			if err != nil {
				return err
			}
			if err := svc.Start(); err != nil {
				_ = svc.Shutdown(context.Background())
				return err
			}
			// SIGHUP scans the model repository now.
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
		wait:
			for {
				select {
				case <-cmd.Context().Done():
					break wait
				case <-hup:
					log.Info("SIGHUP: scanning the model repository")
					svc.Reload()
				}
			}
			log.Info("shutting down: finishing accepted requests", "grace", shutdownGrace)
			ctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
			defer cancel()
			if err := svc.Shutdown(ctx); err != nil {
				return fmt.Errorf("shutdown: %w", err)
			}
			log.Info("stopped")
			return nil
		},
	}
	config.BindFlags(cmd.Flags(), config.ServeCmd)
	cmd.Flags().BoolVar(&printConfig, "print-config", false, "print the effective configuration as YAML and exit")
	return cmd
}
