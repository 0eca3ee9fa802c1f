package main

import (
	"crypto/tls"
	"encoding/json"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mqttinfer/mqttinfer/config"
	devicesim "github.com/mqttinfer/mqttinfer/device-sim"
)

func simCmd() *cobra.Command {
	var o devicesim.Options
	var qos int
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "sim",
		Short: "Simulate devices sending inference requests, then print a load report",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := loadConn(cmd, &o.Broker, &o.Prefix, &o.Username, &o.Password, &o.TLSConfig); err != nil {
				return err
			}
			o.QoS = byte(qos)
			if !asJSON {
				o.Progress = os.Stderr
			}
			rep, runErr := devicesim.Run(cmd.Context(), o)
			if runErr != nil && rep.Sent == 0 && !rep.Interrupted {
				return runErr
			}
			// An interrupted run still reports what it saw.
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if err := enc.Encode(rep); err != nil {
					return err
				}
			} else if _, err := rep.WriteTo(cmd.OutOrStdout()); err != nil {
				return err
			}
			return runErr
		},
	}
	f := cmd.Flags()
	config.BindFlags(f, config.ClientCmd)
	f.StringVar(&o.Version, "api", "v1", "API version of the request topics")
	f.IntVarP(&o.Devices, "devices", "n", 10, "simulated devices, each its own MQTT connection")
	f.StringVar(&o.IDPrefix, "id-prefix", "", "device id prefix: ids are <prefix>0001... (default "+devicesim.DefaultIDPrefix+"<4 random hex digits>-, new each run)")
	f.StringVarP(&o.Model, "model", "m", "anomaly", "model to call")
	f.Float64VarP(&o.Rate, "rate", "r", 1, "requests per second per device")
	f.IntVar(&o.Requests, "requests", 0, "stop each device after this many requests (0 = until --duration)")
	f.IntVar(&qos, "qos", 1, "MQTT QoS of requests and results (0 or 1)")
	f.DurationVarP(&o.Duration, "duration", "d", 10*time.Second, "sending time")
	f.DurationVar(&o.Drain, "drain", 5*time.Second, "how long to wait for outstanding replies at the end")
	f.Int64Var(&o.Seed, "seed", 0, "seed of inputs and schedule (0 = random)")
	f.IntVar(&o.ConnectConcurrency, "connect-concurrency", devicesim.DefaultConnectConcurrency, "devices connecting at once")
	f.BoolVar(&o.ClosedLoop, "closed-loop", false, "each device keeps one request outstanding, sending the next when the last is answered (--rate is ignored): the peak round trips for that many devices")
	f.BoolVar(&o.Lean, "lean", false, "lean clients for thousands of devices: one small connection each, paced by a few shared senders (tcp, ssl and unix brokers; no failover)")
	f.DurationVar(&o.Inputs.AudioChunk, "chunk", 0, "vad: audio per request (default 500ms)")
	f.IntVar(&o.Inputs.FrameSize, "frame-size", 0, "detect: long side of camera frames in pixels (default 640)")
	f.IntVar(&o.Inputs.OCRWidth, "ocr-width", 0, "ocr: display image width in pixels (default: each device picks 320..640)")
	f.IntVar(&o.Inputs.MaxInputSize, "max-input-size", 0, "largest request input in bytes (default 60 KiB; the service's limit is mqtt.max_request_size)")
	f.BoolVar(&o.Inputs.Synthetic, "synthetic-inputs", false, "synthetic audio and images instead of espeak-ng speech and darknet photos")
	f.StringVar(&o.Inputs.Espeak, "espeak", "", "espeak-ng binary for speech (default /usr/bin/espeak-ng)")
	f.StringVar(&o.Inputs.PhotoDir, "photos", "", "directory of JPEG photos for camera frames (default /usr/share/darknet/data)")
	f.BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}

func watchCmd() *cobra.Command {
	var o devicesim.WatchOptions
	cmd := &cobra.Command{
		Use:   "watch",
		Short: "Print result traffic readably (all devices and models, or one)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := loadConn(cmd, &o.Broker, &o.Prefix, &o.Username, &o.Password, &o.TLSConfig); err != nil {
				return err
			}
			err := devicesim.Watch(cmd.Context(), o, cmd.OutOrStdout())
			if cmd.Context().Err() != nil {
				return nil // interrupted: the normal way to stop watching
			}
			return err
		},
	}
	f := cmd.Flags()
	config.BindFlags(f, config.ClientCmd)
	f.StringVar(&o.Version, "api", "", "API version to watch (empty = all)")
	f.StringVar(&o.Device, "device", "", "device to watch (empty = all)")
	f.StringVar(&o.Model, "model", "", "model to watch (empty = all)")
	f.BoolVar(&o.JSON, "json", false, "print one JSON object per message")
	return cmd
}

func modelsCmd() *cobra.Command {
	var o devicesim.ModelsOptions
	cmd := &cobra.Command{
		Use:   "models",
		Short: "Print the model catalog the service publishes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := loadConn(cmd, &o.Broker, &o.Prefix, &o.Username, &o.Password, &o.TLSConfig); err != nil {
				return err
			}
			return devicesim.Models(cmd.Context(), o, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	config.BindFlags(f, config.ClientCmd)
	f.StringVar(&o.Version, "api", "v1", "API version of the catalog")
	f.DurationVar(&o.Timeout, "timeout", 5*time.Second, "how long to wait for the catalog")
	f.BoolVar(&o.JSON, "json", false, "print the catalog as published")
	return cmd
}

func chatCmd() *cobra.Command {
	var o devicesim.ChatOptions
	var showUsage bool
	cmd := &cobra.Command{
		Use:   "chat QUESTION",
		Short: "Ask the chat model over MQTT and print the answer as it streams",
		Long: `Ask the chat model a question over MQTT, as a device, and print the answer
token by token as the stream events arrive. Ctrl-C cancels the question with
the service, which stops the model. The service needs models.chat.base_url
(an OpenAI-compatible server such as Ollama or llama.cpp); see the README.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := loadConn(cmd, &o.Broker, &o.Prefix, &o.Username, &o.Password, &o.TLSConfig); err != nil {
				return err
			}
			if showUsage {
				o.Usage = cmd.ErrOrStderr()
			}
			return devicesim.Chat(cmd.Context(), o, strings.Join(args, " "), cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	config.BindFlags(f, config.ClientCmd)
	f.StringVar(&o.Version, "api", "v1", "API version")
	f.StringVar(&o.Device, "device", "", "device id to ask as (default chat-<random>)")
	f.StringVar(&o.System, "system", "", "system message")
	f.IntVar(&o.MaxTokens, "max-tokens", 0, "cap on the answer's tokens (0 = the service's default)")
	f.DurationVar(&o.Timeout, "timeout", 2*time.Minute, "how long to wait for the whole answer")
	f.BoolVar(&showUsage, "usage", false, "print the token usage at the end (on stderr)")
	return cmd
}

// loadConn loads the connection settings of a client command, from its
// flags (config.BindFlags with config.ClientCmd), the MQTTINFER_*
// environment and the config file, as `mqttinfer worker` does, into the
// fields of the command's options.
func loadConn(cmd *cobra.Command, broker, prefix, username, password *string, tlsConfig **tls.Config) error {
	cfg, err := loadConfig(cmd)
	if err != nil {
		return err
	}
	t, err := cfg.Remote.TLSConfig()
	if err != nil {
		return err
	}
	*broker, *prefix, *username, *password, *tlsConfig = cfg.Remote.Broker, cfg.Prefix, cfg.Remote.Username, cfg.Remote.Password, t
	return nil
}
