package broker

import (
	"fmt"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// TestRetainedWhileSubscribing: clients subscribe to a wildcard filter
// over retained messages while others keep publishing retained messages
// under it, as remote workers do with their status. Under -race this
// checks the patch carried in third_party/mochi-mqtt-server: mochi v2.7.9
// read a retained message's path without its lock.
func TestRetainedWhileSubscribing(t *testing.T) {
	b, err := New(Options{TCPAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Serve(); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	dial := func(id string) paho.Client {
		c := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + b.Addr()).SetClientID(id).SetAutoReconnect(false))
		if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("connect %s: %v", id, tok.Error())
		}
		return c
	}
	var wg sync.WaitGroup
	for p := range 4 {
		pub := dial(fmt.Sprint("pub-", p))
		defer pub.Disconnect(0)
		wg.Go(func() {
			for i := range 200 {
				pub.Publish(fmt.Sprintf("retained/%d/%d", p, i%20), 1, true, []byte("x")).WaitTimeout(10 * time.Second)
			}
		})
	}
	for s := range 4 {
		sub := dial(fmt.Sprint("sub-", s))
		defer sub.Disconnect(0)
		wg.Go(func() {
			for i := range 50 {
				filter := fmt.Sprintf("retained/%d/+", i%4)
				sub.Subscribe(filter, 1, func(paho.Client, paho.Message) {}).WaitTimeout(10 * time.Second)
				sub.Unsubscribe(filter).WaitTimeout(10 * time.Second)
			}
		})
	}
	wg.Wait()
}
