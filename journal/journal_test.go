package journal

import (
	"fmt"
	"testing"
	"time"
)

func TestJournalKeepsWhatIsNotDone(t *testing.T) {
	dir := t.TempDir()
	j, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	var keys []uint64
	for i := range 5 {
		k, err := j.Add(Entry{Topic: fmt.Sprint("p/v1/req/d/m", i), Payload: []byte(fmt.Sprint(i)), QoS: 1, Received: time.Unix(int64(i), 0)})
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	for _, k := range []uint64{keys[0], keys[2], keys[4]} {
		if err := j.Done(k); err != nil {
			t.Fatal(err)
		}
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	// Reopened, as after a restart: what was not done is still there, in order.
	j, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	got, err := j.Pending()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || string(got[0].Payload) != "1" || string(got[1].Payload) != "3" || got[1].Key != keys[3] || got[0].QoS != 1 {
		t.Fatalf("pending %+v", got)
	}
	// New keys follow the ones still there.
	k, err := j.Add(Entry{Topic: "x"})
	if err != nil || k <= keys[3] {
		t.Fatalf("new key %d after %d: %v", k, keys[3], err)
	}
}
