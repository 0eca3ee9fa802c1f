// Package metrics owns the Prometheus collectors of mqttinfer. They are
// registered on an explicit registry passed to New, never on the global one,
// so tests and several services in one process do not interfere. A nil
// *Metrics is valid and records nothing.
package metrics

import (
	"strconv"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mqttinfer/mqttinfer/topics"
)

// Metrics holds the service's collectors.
type Metrics struct {
	requests   *prometheus.CounterVec
	latency    *prometheus.HistogramVec
	queueWait  prometheus.Histogram
	rejected   *prometheus.CounterVec
	throttled  *prometheus.CounterVec
	queueDepth prometheus.Gauge
	busy       prometheus.Gauge
	connected  prometheus.Gauge
	dropped    prometheus.Counter
	dedup      prometheus.Counter
	replayed   prometheus.Counter
	versionReq *prometheus.CounterVec
	versionLat *prometheus.HistogramVec
	workerUp   *prometheus.GaugeVec
	remote     *prometheus.CounterVec
	partitions prometheus.Gauge
	held       prometheus.Gauge
	heldLost   prometheus.Counter

	// knownModel says which model names may be label values; the version
	// and model levels of a request topic come from devices, and a label
	// value per made-up name would grow every scrape without bound.
	knownModel atomic.Pointer[func(string) bool]
}

// OtherLabel is the label value that stands for every unknown model name
// and API version.
const OtherLabel = "other"

// SetModels sets the model names that may be label values (those the
// node serves); others are counted under OtherLabel. Until it is called
// every model name is.
func (m *Metrics) SetModels(known func(name string) bool) {
	if m != nil {
		m.knownModel.Store(&known)
	}
}

// model is the label value of a model name.
func (m *Metrics) model(name string) string {
	if f := m.knownModel.Load(); f != nil && !(*f)(name) {
		return OtherLabel
	}
	return name
}

// version is the label value of an API version.
func labelVersion(v string) string {
	if !topics.Supported(v) {
		return OtherLabel
	}
	return v
}

// New creates the collectors and registers them on reg.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mqttinfer_requests_total",
			Help: "Inference requests answered, by API version, model and status code (every reply, errors included).",
		}, []string{"version", "model", "status"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "mqttinfer_inference_seconds",
			Help:    "Time spent in the model per request, by model.",
			Buckets: prometheus.ExponentialBuckets(0.00005, 2.5, 14),
		}, []string{"model"}),
		queueWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "mqttinfer_queue_wait_seconds",
			Help:    "Time a request waited in the dispatch queue before a worker took it.",
			Buckets: prometheus.ExponentialBuckets(0.00001, 3, 14),
		}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mqttinfer_rejected_total",
			Help: "Requests rejected before reaching a worker, by reason (the error type sent back).",
		}, []string{"reason"}),
		throttled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mqttinfer_throttled_total",
			Help: "Requests refused by a device's throttle, by reason (rate or in_flight).",
		}, []string{"reason"}),
		queueDepth: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mqttinfer_queue_depth",
			Help: "Requests waiting in the in-process dispatch queue.",
		}),
		busy: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mqttinfer_workers_busy",
			Help: "Workers running a request now.",
		}),
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mqttinfer_connected_clients",
			Help: "MQTT clients connected to the embedded broker.",
		}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mqttinfer_replies_dropped_total",
			Help: "Replies the broker dropped because a client's outbound queue was full.",
		}),
		dedup: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mqttinfer_duplicates_total",
			Help: "Copies of requests already taken (redelivered, or sent again) that were not run again.",
		}),
		replayed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mqttinfer_results_replayed_total",
			Help: "Results a cluster edge sent a device that had missed them (its edge died, or it reconnected).",
		}),
		workerUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mqttinfer_worker_up",
			Help: "1 while a worker transport is running and accepting requests, by transport.",
		}, []string{"transport"}),
	}
	m.versionReq = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mqttinfer_model_version_requests_total",
		Help: "Requests a model version answered, by model, version and status code: how a canary compares with the version it may replace.",
	}, []string{"model", "version", "status"})
	m.versionLat = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "mqttinfer_model_version_inference_seconds",
		Help:    "Time a model version spent on a request, by model and version.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 14),
	}, []string{"model", "version"})
	reg.MustRegister(m.versionReq, m.versionLat)
	m.remote = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mqttinfer_remote_requests_total",
		Help: "Requests remote workers answered through this broker, by API version, model and status code, counted as their final replies pass (their own /metrics has the details).",
	}, []string{"version", "model", "status"})
	m.partitions = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "mqttinfer_worker_partitions",
		Help: "Device partitions this remote worker serves now (of 256 in its group; in a cluster, of cluster.partitions).",
	})
	m.held = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "mqttinfer_worker_held_requests",
		Help: "Copies of other workers' requests this remote worker holds until their answers are seen.",
	})
	m.heldLost = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "mqttinfer_worker_held_dropped_total",
		Help: "Copies of requests a remote worker dropped unanswered: no room, or no worker answered them before their deadline.",
	})
	reg.MustRegister(m.requests, m.latency, m.queueWait, m.rejected, m.throttled,
		m.queueDepth, m.busy, m.connected, m.dropped, m.dedup, m.replayed, m.workerUp, m.remote, m.partitions, m.held, m.heldLost)
	return m
}

// Request counts one reply to a request.
func (m *Metrics) Request(version, model string, status int) {
	if m == nil {
		return
	}
	m.requests.WithLabelValues(labelVersion(version), m.model(model), strconv.Itoa(status)).Inc()
}

// Inference records the time a model spent on one request, in seconds.
func (m *Metrics) Inference(model string, seconds float64) {
	if m == nil {
		return
	}
	m.latency.WithLabelValues(m.model(model)).Observe(seconds)
}

// QueueWait records the time a request waited for a worker, in seconds.
func (m *Metrics) QueueWait(seconds float64) {
	if m == nil {
		return
	}
	m.queueWait.Observe(seconds)
}

// Rejected counts a request rejected before a worker, by error type.
func (m *Metrics) Rejected(reason string) {
	if m == nil {
		return
	}
	m.rejected.WithLabelValues(reason).Inc()
}

// Throttled counts a throttle refusal, by reason.
func (m *Metrics) Throttled(reason string) {
	if m == nil {
		return
	}
	m.throttled.WithLabelValues(reason).Inc()
}

// QueueDepth adds d to the queue depth gauge.
func (m *Metrics) QueueDepth(d float64) {
	if m == nil {
		return
	}
	m.queueDepth.Add(d)
}

// Busy adds d to the busy workers gauge.
func (m *Metrics) Busy(d float64) {
	if m == nil {
		return
	}
	m.busy.Add(d)
}

// Connected adds d to the connected clients gauge.
func (m *Metrics) Connected(d float64) {
	if m == nil {
		return
	}
	m.connected.Add(d)
}

// Dropped counts a reply dropped by the broker.
func (m *Metrics) Dropped() {
	if m == nil {
		return
	}
	m.dropped.Inc()
}

// Duplicate counts a redelivered request answered from the cache.
func (m *Metrics) Duplicate() {
	if m == nil {
		return
	}
	m.dedup.Inc()
}

// VersionRequest counts a request a model version answered, and how long
// it took.
func (m *Metrics) VersionRequest(model, version string, status int, seconds float64) {
	if m == nil {
		return
	}
	model = m.model(model)
	m.versionReq.WithLabelValues(model, version, strconv.Itoa(status)).Inc()
	m.versionLat.WithLabelValues(model, version).Observe(seconds)
}

// Replayed counts results sent again to a device that had missed them.
func (m *Metrics) Replayed(n int) {
	if m == nil {
		return
	}
	m.replayed.Add(float64(n))
}

// WorkerUp sets whether the named worker transport is up.
func (m *Metrics) WorkerUp(transport string, up bool) {
	if m == nil {
		return
	}
	v := 0.0
	if up {
		v = 1
	}
	m.workerUp.WithLabelValues(transport).Set(v)
}

// RemoteRequest counts a final reply of a remote worker passing the broker.
func (m *Metrics) RemoteRequest(version, model string, status int) {
	if m == nil {
		return
	}
	m.remote.WithLabelValues(labelVersion(version), m.model(model), strconv.Itoa(status)).Inc()
}

// Group records a remote worker's share of its group: the partitions it
// serves and the copies of requests it holds.
func (m *Metrics) Group(partitions, held int) {
	if m == nil {
		return
	}
	m.partitions.Set(float64(partitions))
	m.held.Set(float64(held))
}

// HeldDropped counts copies of requests dropped unanswered.
func (m *Metrics) HeldDropped(n int) {
	if m == nil {
		return
	}
	m.heldLost.Add(float64(n))
}
