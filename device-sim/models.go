package devicesim

import (
	"cmp"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/mqttinfer/mqttinfer/topics"
)

// DefaultCatalogTimeout is how long Models waits for the retained catalog.
const DefaultCatalogTimeout = 5 * time.Second

// ModelsOptions configure Models.
type ModelsOptions struct {
	// Broker is the MQTT broker URL (default "tcp://127.0.0.1:1883").
	Broker string
	// Prefix is the service's topic prefix (default "mqttinfer").
	Prefix string
	// Version is the API version whose catalog to read (default "v1").
	Version string
	// ClientID is the MQTT client id (default "models-" + 8 random hex digits).
	ClientID string
	// Username and Password, when the broker wants them.
	Username string
	Password string
	// TLSConfig configures ssl://, tls://, mqtts:// and wss:// brokers (a
	// private CA, a client certificate); nil = the system's roots.
	TLSConfig *tls.Config
	// Timeout is how long to wait for the retained catalog (default 5 s).
	Timeout time.Duration
	// JSON prints the catalog as it was published instead of a table.
	JSON bool
	// ConnectTimeout bounds the CONNECT (default 10 s).
	ConnectTimeout time.Duration
}

// CatalogModel is one entry of the model catalog, as far as the tools read it.
type CatalogModel struct {
	Name        string `json:"name"`
	Version     string `json:"version"`
	Description string `json:"description"`
	Cost        int    `json:"cost"`
	Streaming   bool   `json:"streaming"`
	// Unavailable is the reason the model cannot serve, empty when it can.
	Unavailable string `json:"unavailable,omitempty"`
}

// Catalog is the retained model catalog of one API version.
type Catalog struct {
	Models []CatalogModel `json:"models"`
}

// Models reads the retained model catalog from topics.Models(prefix,
// version) and prints it as a table (name, version, cost, streaming, status,
// description), or as published when opts.JSON is set. It fails with a clear
// error when no catalog arrives within opts.Timeout.
func Models(ctx context.Context, opts ModelsOptions, out io.Writer) error {
	raw, _, err := FetchCatalog(ctx, opts)
	if err != nil {
		return err
	}
	if opts.JSON {
		_, err := fmt.Fprintf(out, "%s\n", raw)
		return err
	}
	var c Catalog
	if err := json.Unmarshal(raw, &c); err != nil {
		return fmt.Errorf("models: the catalog on %s is not valid JSON: %w", topics.Models(cmp.Or(opts.Prefix, topics.DefaultPrefix), cmp.Or(opts.Version, DefaultVersion)), err)
	}
	return c.WriteTable(out)
}

// WriteTable prints the catalog as an aligned table.
func (c Catalog) WriteTable(out io.Writer) error {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tVERSION\tCOST\tSTREAMING\tSTATUS\tDESCRIPTION")
	for _, m := range c.Models {
		status := "available"
		if m.Unavailable != "" {
			status = "unavailable: " + m.Unavailable
		}
		streaming := "no"
		if m.Streaming {
			streaming = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", m.Name, m.Version, strconv.Itoa(m.Cost), streaming, status, m.Description)
	}
	if len(c.Models) == 0 {
		fmt.Fprintln(tw, "(the catalog lists no models)")
	}
	return tw.Flush()
}

// FetchCatalog reads the retained catalog and returns it as published and
// decoded. The decoded catalog is empty when the payload is not a catalog.
func FetchCatalog(ctx context.Context, opts ModelsOptions) (json.RawMessage, Catalog, error) {
	opts.Prefix = cmp.Or(opts.Prefix, topics.DefaultPrefix)
	opts.Version = cmp.Or(opts.Version, DefaultVersion)
	opts.Timeout = cmp.Or(opts.Timeout, DefaultCatalogTimeout)
	if err := topics.ValidPrefix(opts.Prefix); err != nil {
		return nil, Catalog{}, fmt.Errorf("models: %w", err)
	}
	if err := topics.ValidID(opts.Version); err != nil {
		return nil, Catalog{}, fmt.Errorf("models: version: %w", err)
	}
	topic := topics.Models(opts.Prefix, opts.Version)

	cl, err := dial(ctx, conn{
		broker: opts.Broker, clientID: cmp.Or(opts.ClientID, randomClientID("models-")),
		username: opts.Username, password: opts.Password, tls: opts.TLSConfig, timeout: opts.ConnectTimeout,
	})
	if err != nil {
		return nil, Catalog{}, fmt.Errorf("models: %w", err)
	}
	defer cl.Disconnect(disconnectQuiesce)

	got := make(chan []byte, 1)
	err = subscribe(ctx, cl, topic, 1, func(_ mqtt.Client, m mqtt.Message) {
		if len(m.Payload()) == 0 {
			return // a cleared retained message
		}
		select {
		case got <- m.Payload():
		default:
		}
	})
	if err != nil {
		return nil, Catalog{}, fmt.Errorf("models: %w", err)
	}
	timer := time.NewTimer(opts.Timeout)
	defer timer.Stop()
	select {
	case raw := <-got:
		var c Catalog
		_ = json.Unmarshal(raw, &c)
		return raw, c, nil
	case <-timer.C:
		return nil, Catalog{}, fmt.Errorf("models: no catalog on %s within %s: is the service running with prefix %q?", topic, opts.Timeout, opts.Prefix)
	case <-ctx.Done():
		return nil, Catalog{}, fmt.Errorf("models: %w", ctx.Err())
	}
}
