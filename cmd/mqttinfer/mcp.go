package main

import (
	"encoding/base64"
	"errors"
	"net/http"
	"os"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/spf13/cobra"

	"github.com/mqttinfer/mqttinfer/mcpserver"
)

// mcpCmd serves the MCP tools on stdin/stdout for an LLM host that starts
// it, calling a running service's HTTP gateway.
func mcpCmd() *cobra.Command {
	var c mcpserver.Client
	var username string
	cmd := &cobra.Command{
		Use:   "mcp",
		Short: "Serve the Model Context Protocol on stdio for an LLM host (Claude Desktop...), calling a running service",
		Long: `Serve the Model Context Protocol (MCP) on stdin and stdout, for an LLM host
that starts this command: tools to list the models, run them, list the
devices with their throttle state, read a device's recent results and the
recent anomalies, and the model catalog as a resource. Every tool calls the
HTTP gateway of a running service (--server), which authenticates,
authorizes and throttles it like any HTTP client. With auth on, give
--username and $MQTTINFER_MCP_PASSWORD, or $MQTTINFER_MCP_API_KEY; running
models needs a device's login, the fleet tools an observer's. A running
service also serves MCP itself at /mcp on its HTTP port.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c.Header = http.Header{}
			key, pass := os.Getenv("MQTTINFER_MCP_API_KEY"), os.Getenv("MQTTINFER_MCP_PASSWORD")
			switch {
			case key != "":
				c.Header.Set("Authorization", "Bearer "+key)
			case username != "":
				if pass == "" {
					return errors.New("--username needs $MQTTINFER_MCP_PASSWORD")
				}
				c.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(username+":"+pass)))
			}
			c.HTTP = &http.Client{Timeout: 5 * time.Minute}
			err := mcpserver.New(&c).Run(cmd.Context(), &mcp.StdioTransport{})
			if cmd.Context().Err() != nil {
				return nil // interrupted
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.URL, "server", "http://127.0.0.1:8080", "base URL of the service's HTTP gateway (http.addr of mqttinfer serve)")
	f.StringVar(&username, "username", "", "user of the service's credentials file (password: $MQTTINFER_MCP_PASSWORD; or an API key in $MQTTINFER_MCP_API_KEY)")
	return cmd
}
