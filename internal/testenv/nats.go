package testenv

import (
	"fmt"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/mqttinfer/mqttinfer/cluster/natsd"
)

// NATSCluster is a NATS cluster with JetStream run inside the test
// process, on random loopback ports.
type NATSCluster struct {
	Servers []*server.Server
}

// URL is every server's client URL, comma-separated (cluster.url).
func (c *NATSCluster) URL() string {
	var urls []string
	for _, s := range c.Servers {
		urls = append(urls, s.ClientURL())
	}
	return strings.Join(urls, ",")
}

// StartNATS starts n NATS servers with JetStream routed into one cluster
// (n = 1: a single server) and stops them when the test ends.
func StartNATS(t testing.TB, n int) *NATSCluster {
	t.Helper()
	// The route ports are picked before the servers bind them, and another
	// test may take one in between: then start over on others.
	var err error
	for range 5 {
		var c *NATSCluster
		if c, err = startNATS(t, n); err == nil {
			t.Cleanup(c.stop)
			return c
		}
	}
	t.Fatal(err)
	return nil
}

func startNATS(t testing.TB, n int) (*NATSCluster, error) {
	c := &NATSCluster{}
	var routes []string
	for range n {
		routes = append(routes, fmt.Sprintf("127.0.0.1:%d", FreePort(t)))
	}
	for i := range n {
		o := natsd.ServerOptions{
			Name:     fmt.Sprintf("n%d", i+1),
			Listen:   "127.0.0.1:0",
			StoreDir: t.TempDir(),
			MaxStore: 256 << 20,
		}
		if n > 1 {
			o.ClusterName = "test"
			o.ClusterListen = routes[i]
			o.Routes = append(append([]string{}, routes[:i]...), routes[i+1:]...)
		}
		s, err := natsd.StartServer(o)
		if err != nil {
			c.stop()
			return nil, err
		}
		c.Servers = append(c.Servers, s)
	}
	return c, nil
}

func (c *NATSCluster) stop() {
	for _, s := range c.Servers {
		s.Shutdown()
	}
	for _, s := range c.Servers {
		s.WaitForShutdown()
	}
}
