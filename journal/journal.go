// Package journal keeps the requests a node has accepted for its
// in-process workers until they are answered, so that a crash loses none:
// a request is written before the device gets its PUBACK and removed once
// its reply is out, and after a restart the node runs what the journal still
// holds. It is a Pebble database (github.com/cockroachdb/pebble), written
// without fsync: it survives the process being killed (the operating
// system keeps what was written), not the machine losing power.
package journal

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble"
)

// Entry is one accepted request, as the node needs it to run it again.
type Entry struct {
	// Key names the entry in the journal (set by Add).
	Key             uint64    `json:"-"`
	Topic           string    `json:"topic"`
	Payload         []byte    `json:"payload"`
	QoS             byte      `json:"qos"`
	ContentType     string    `json:"content_type,omitempty"`
	ResponseTopic   string    `json:"response_topic,omitempty"`
	CorrelationData []byte    `json:"correlation_data,omitempty"`
	Received        time.Time `json:"received"`
}

// Journal is the journal of accepted requests. It is safe for concurrent use.
type Journal struct {
	db   *pebble.DB
	next atomic.Uint64
	mu   sync.RWMutex // closed guards against use after Close
	done bool
}

// Open opens (creating it if needed) the journal in dir.
func Open(dir string) (*Journal, error) {
	db, err := pebble.Open(dir, &pebble.Options{Logger: quiet{}})
	if err != nil {
		return nil, fmt.Errorf("journal %s: %w", dir, err)
	}
	j := &Journal{db: db}
	// Keys go on after the highest one left.
	it, err := db.NewIter(nil)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("journal %s: %w", dir, err)
	}
	if it.Last() {
		j.next.Store(binary.BigEndian.Uint64(it.Key()))
	}
	if err := it.Close(); err != nil {
		db.Close()
		return nil, err
	}
	return j, nil
}

var errClosed = errors.New("journal is closed")

// Add writes e and returns its key.
func (j *Journal) Add(e Entry) (uint64, error) {
	b, err := json.Marshal(e)
	if err != nil {
		return 0, err
	}
	key := j.next.Add(1)
	j.mu.RLock()
	defer j.mu.RUnlock()
	if j.done {
		return 0, errClosed
	}
	return key, j.db.Set(keyOf(key), b, pebble.NoSync)
}

// Done removes the entry key: its request has been answered.
func (j *Journal) Done(key uint64) error {
	j.mu.RLock()
	defer j.mu.RUnlock()
	if j.done {
		return errClosed
	}
	return j.db.Delete(keyOf(key), pebble.NoSync)
}

// Pending returns the entries still in the journal, oldest first: the
// requests accepted and not answered before the node stopped.
func (j *Journal) Pending() ([]Entry, error) {
	j.mu.RLock()
	defer j.mu.RUnlock()
	if j.done {
		return nil, errClosed
	}
	it, err := j.db.NewIter(nil)
	if err != nil {
		return nil, err
	}
	var out []Entry
	for it.First(); it.Valid(); it.Next() {
		var e Entry
		if err := json.Unmarshal(it.Value(), &e); err != nil {
			it.Close()
			return out, fmt.Errorf("journal entry %x: %w", it.Key(), err)
		}
		e.Key = binary.BigEndian.Uint64(it.Key())
		out = append(out, e)
	}
	return out, it.Close()
}

// Close flushes and closes the journal.
func (j *Journal) Close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.done {
		return nil
	}
	j.done = true
	return j.db.Close()
}

func keyOf(k uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], k)
	return b[:]
}

// quiet drops Pebble's informational logs.
type quiet struct{}

func (quiet) Infof(string, ...any) {}
func (quiet) Fatalf(format string, args ...any) {
	panic(fmt.Sprintf(format, args...))
}
