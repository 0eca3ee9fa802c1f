package service

import (
	"errors"
	"log/slog"
	"path/filepath"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/broker"
	"github.com/mqttinfer/mqttinfer/journal"
	"github.com/mqttinfer/mqttinfer/pipeline"
	"github.com/mqttinfer/mqttinfer/topics"
)

// journaling is the broker's dispatcher when storage is on: it writes each
// accepted request to the journal before handing it to the pool (the
// broker PUBACKs it only then) and forgets it once it has been answered.
type journaling struct {
	pool dispatcher // the in-process pool (observed)
	j    *journal.Journal
	log  *slog.Logger
}

var _ interface {
	broker.Dispatcher
	broker.Canceler
} = (*journaling)(nil)

func (d *journaling) Dispatch(r *pipeline.Request) error {
	key, err := d.j.Add(journal.Entry{
		Topic:           r.Topic.String(),
		Payload:         r.Payload,
		QoS:             r.QoS,
		ContentType:     r.ContentType,
		ResponseTopic:   r.ResponseTopic,
		CorrelationData: r.CorrelationData,
		Received:        r.Received,
	})
	if err != nil {
		d.log.Error("journal: request refused", "error", err)
		return api.Errorf(api.Overloaded, "the service cannot record the request: %v", err)
	}
	r.OnDone = d.forget(key)
	return d.pool.Dispatch(r) // on an error the broker calls r.Done: forgotten
}

func (d *journaling) Cancel(device, id string) bool { return d.pool.Cancel(device, id) }

func (d *journaling) forget(key uint64) func() {
	return func() {
		if err := d.j.Done(key); err != nil {
			d.log.Warn("journal: answered request not forgotten", "key", key, "error", err)
		}
	}
}

// journalDir is the journal's directory under the storage directory.
func journalDir(storage string) string { return filepath.Join(storage, "journal") }

// brokerDir is the broker store's directory under the storage directory.
func brokerDir(storage string) string { return filepath.Join(storage, "broker") }

// replay runs the requests the journal still holds: those accepted and not
// answered before the node stopped (a crash). Their deadlines count from
// when they were first received, so a request that waited too long is
// answered 408. It returns how many it replayed.
func (s *Service) replay(d *journaling, adm *pipeline.Admission) (int, error) {
	entries, err := d.j.Pending()
	if err != nil {
		return 0, err
	}
	for _, e := range entries {
		t, perr := topics.Parse(s.cfg.Prefix, e.Topic)
		if perr != nil {
			s.log.Warn("journal: entry on a topic this node no longer serves dropped", "topic", e.Topic, "error", perr)
			d.forget(e.Key)()
			continue
		}
		r := &pipeline.Request{Topic: t, Payload: e.Payload, QoS: e.QoS, Received: e.Received,
			ContentType: e.ContentType, ResponseTopic: e.ResponseTopic, CorrelationData: e.CorrelationData}
		r.OnDone = d.forget(e.Key)
		if ae := adm.Admit(r); ae != nil {
			s.answer(r, adm, ae)
			continue
		}
		if err := d.pool.Dispatch(r); err != nil {
			var ae *api.Error
			if !errors.As(err, &ae) {
				ae = api.Errorf(api.Overloaded, "the service is out of capacity: %v", err)
			}
			s.answer(r, adm, ae)
		}
	}
	return len(entries), nil
}

// answer sends an error reply to a replayed request and forgets it.
func (s *Service) answer(r *pipeline.Request, adm *pipeline.Admission, e *api.Error) {
	defer r.Done()
	reply, err := adm.ErrorReply(r, e)
	if err == nil {
		err = s.broker.Send(reply, r.QoS)
	}
	if err != nil {
		s.log.Warn("journal: reply to a replayed request", "topic", r.Topic.String(), "error", err)
	}
}
