package mqttclient

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/url"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// dialWebsocket opens MQTT over WebSocket (subprotocol "mqtt") and returns
// it as a net.Conn carrying the MQTT byte stream in binary messages, as
// eclipse/paho.golang's autopaho does.
func dialWebsocket(ctx context.Context, u *url.URL, tlsCfg *tls.Config) (net.Conn, error) {
	d := *websocket.DefaultDialer
	d.TLSClientConfig = tlsCfg
	d.Subprotocols = []string{"mqtt"}
	dialURL := *u
	dialURL.User = nil // gorilla refuses URLs with user info
	ws, resp, err := d.DialContext(ctx, dialURL.String(), nil)
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	if err != nil {
		return nil, err
	}
	return &wsConn{Conn: ws}, nil
}

// wsConn is a WebSocket connection as a net.Conn.
type wsConn struct {
	*websocket.Conn
	rmu sync.Mutex
	r   io.Reader // the binary message being read
	wmu sync.Mutex
}

func (c *wsConn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for {
		if c.r == nil {
			_, r, err := c.NextReader()
			if err != nil {
				return 0, err
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if err == io.EOF {
			c.r = nil
			if n == 0 {
				continue
			}
			err = nil
		}
		return n, err
	}
}

func (c *wsConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *wsConn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}
