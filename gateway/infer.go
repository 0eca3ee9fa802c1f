package gateway

import (
	"bytes"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/throttle"
	"github.com/mqttinfer/mqttinfer/topics"
	"github.com/mqttinfer/mqttinfer/worker"
)

// exchange is one inference request and what the gateway learned about it.
type exchange struct {
	w      http.ResponseWriter
	r      *http.Request
	ver    string
	model  string
	client string // the device id: see clientOf
	id     string // the request id, echoed in every reply
	cbor   bool   // answer in CBOR
	// known is set once the version and the model exist, so that metrics
	// labelled by them cannot be inflated by made-up paths.
	known bool
	// dec is the client's throttle decision: AllowN's, or a Peek for a
	// request refused before the throttle. nil without a throttle.
	dec *throttle.Decision
}

// admission is what an admitted request owes the throttle; no-ops without one.
type admission struct {
	release func()              // the in-flight slot, once the request is finished
	refund  func()              // every token, when the request never ran
	settle  func(share float64) // the share of the cost a metered output used
}

// infer answers POST /{ver}/models/{model}/infer.
//
// The checks run in the order of the broker's: URL (version, model), body
// (size, syntax, fields), service (pool, model loaded), then the client's
// throttle, so that a request refused for its own faults costs no tokens.
func (g *gateway) infer(w http.ResponseWriter, r *http.Request) {
	received := time.Now()
	x := &exchange{w: w, r: r, ver: r.PathValue("ver"), model: r.PathValue("model"), client: g.clientOf(r)}
	requestCBOR := isCBOR(r.Header.Get("Content-Type"))
	body, bodyErr := g.readBody(w, r, x.model)
	if bodyErr == nil && !requestCBOR {
		x.id = api.PeekID(body)
	}

	if !topics.Supported(x.ver) {
		e := api.Errorf(api.UnsupportedVersion, "API version %q is not supported; versions: %s", x.ver, strings.Join(topics.Versions(), ", "))
		e.Versions = topics.Versions()
		g.reject(x, e)
		return
	}
	if x.ver != "v1" {
		x.cbor = wantsCBOR(r.Header.Values("Accept"), requestCBOR)
	}
	m, ok := g.models.Get(x.model)
	if !ok {
		g.reject(x, g.modelNotFound(x.model))
		return
	}
	x.known = true
	if bodyErr != nil {
		g.reject(x, bodyErr)
		return
	}
	contentType := contentTypeJSON
	if requestCBOR {
		contentType = api.ContentTypeCBOR
	}
	req, e := api.Decode(x.ver, body, contentType)
	if req.ID != "" {
		x.id = req.ID
	}
	if e != nil {
		g.reject(x, e)
		return
	}
	if req.ID == "" {
		req.ID = api.NewID()
		x.id = req.ID
	}
	if e := resolveStream(r, &req); e != nil {
		g.reject(x, e)
		return
	}
	if g.pool == nil {
		g.reject(x, api.Errorf(api.ModelUnavailable, "model %q is not available here: this gateway has no worker pool", x.model))
		return
	}
	if why := m.Info().Unavailable; why != "" {
		g.reject(x, api.Errorf(api.ModelUnavailable, "model %q is not available here: %s", x.model, why))
		return
	}
	if req.Cancel {
		g.cancel(x, req.ID)
		return
	}

	job := worker.Job{Version: x.ver, Device: x.client, Model: x.model, Request: req, Received: received}
	adm, e := g.admit(x, len(req.Inputs))
	if e != nil {
		g.reject(x, e)
		return
	}
	if x.dec != nil {
		job.RateLimit = rateLimitOf(*x.dec)
	}
	if g.pool.Core().Streams(job) {
		g.stream(x, job, adm)
		return
	}
	g.run(x, job, adm)
}

// admit takes the request's tokens and in-flight slot from the client's
// bucket (n inputs charged as one batch), or says why not.
func (g *gateway) admit(x *exchange, n int) (admission, *api.Error) {
	adm := admission{release: func() {}, refund: func() {}, settle: func(float64) {}}
	if g.limiter == nil {
		return adm, nil
	}
	d := g.limiter.AllowN(x.client, x.model, n)
	x.dec = &d
	switch {
	case d.Reason == throttle.ReasonTooLarge:
		return adm, api.Errorf(api.PayloadTooLarge, "%s", d.Describe(x.client))
	case !d.Allowed:
		g.metrics.Throttled(string(d.Reason))
		e := api.Errorf(api.RateLimited, "%s", d.Describe(x.client))
		e.RetryAfterMS = max(d.RetryAfterMillis(), 1)
		return adm, e
	}
	l, client, cost := g.limiter, x.client, d.Cost
	adm.release = sync.OnceFunc(func() { l.Done(client) })
	adm.refund = func() { l.Refund(client, cost) }
	adm.settle = func(share float64) { l.Settle(client, cost, share) }
	return adm, nil
}

// run answers a request that is not streamed: it waits for the pool's
// result (and for the throttle to be settled) and sends it. A client that
// goes away cancels the request (Task.Context); the pool then answers 499 to
// nobody and counts it.
func (g *gateway) run(x *exchange, job worker.Job, adm admission) {
	results := make(chan api.Result, 1)
	finished := make(chan struct{})
	err := g.pool.Submit(worker.Task{
		Job:     job,
		Context: x.r.Context(),
		Result:  func(res api.Result) { results <- res },
		Done:    func() { adm.release(); close(finished) },
		Settle:  adm.settle,
	})
	if err != nil {
		g.refused(x, adm, err)
		return
	}
	select {
	case <-finished:
	case <-x.r.Context().Done():
		return
	}
	select {
	case res := <-results:
		g.answer(x, res)
	default:
		g.log.Error("the pool finished a request without a result", "model", x.model, "id", x.id)
		g.answer(x, api.ErrorResult(x.id, x.model, api.Errorf(api.InferenceFailed, "request %q ended without a result", x.id)))
	}
}

// refused answers a request the pool did not take (a full queue, a pool
// shutting down): the client gets its tokens back, as on MQTT.
func (g *gateway) refused(x *exchange, adm admission, err error) {
	adm.release()
	adm.refund()
	var e *api.Error
	if !errors.As(err, &e) {
		e = api.Errorf(api.Overloaded, "the service is out of capacity: %v", err)
	}
	if x.dec != nil {
		d := standing(g.limiter.Peek(x.client, x.model))
		x.dec = &d
	}
	g.reject(x, e)
}

// cancel cancels the client's queued or running request id, which is then
// answered 499 wherever it is waiting. A cancel costs no tokens.
func (g *gateway) cancel(x *exchange, id string) {
	if !g.pool.Cancel(x.client, id) {
		g.reject(x, api.Errorf(api.InvalidRequest, "no queued or running request with id %q to cancel", id))
		return
	}
	g.answer(x, api.Result{ID: id, Model: x.model, Status: api.StatusOK, Output: []byte(`{"canceled":true}`)})
}

// reject answers a request refused before the pool with an error reply,
// counted as the broker counts its refusals.
func (g *gateway) reject(x *exchange, e *api.Error) {
	g.metrics.Rejected(string(e.Type))
	if x.known {
		g.metrics.Request(x.ver, x.model, e.Status())
	}
	res := api.ErrorResult(x.id, x.model, e)
	if g.limiter != nil {
		res.RateLimit = rateLimitOf(*g.decision(x))
	}
	g.log.Debug("inference request refused", "client", x.client, "version", x.ver, "model", x.model, "id", x.id, "status", res.Status, "error", e.Message)
	g.answer(x, res)
}

// decision returns the client's throttle decision, peeking when the request
// did not reach the throttle. Call it only with a throttle.
func (g *gateway) decision(x *exchange) *throttle.Decision {
	if x.dec == nil {
		d := standing(g.limiter.Peek(x.client, x.model))
		x.dec = &d
	}
	return x.dec
}

// answer sends a reply with the rate-limit headers, with the reply's status
// as the HTTP status, in CBOR or JSON.
func (g *gateway) answer(x *exchange, res api.Result) {
	h := x.w.Header()
	if g.limiter != nil {
		setRateLimitHeaders(h, *g.decision(x))
	}
	if res.Error != nil && res.Error.RetryAfterMS > 0 {
		setRetryAfter(h, res.Error.RetryAfterMS) // 429, and 503 when the model's backend says when
	}
	var body []byte
	var err error
	if x.cbor {
		body, err = api.MarshalCBOR(res)
		h.Set("Content-Type", api.ContentTypeCBOR)
	} else {
		body, err = api.Marshal(x.ver, res)
		h.Set("Content-Type", contentTypeJSON)
	}
	if err != nil {
		g.log.Error("encode reply", "model", x.model, "id", x.id, "error", err)
		http.Error(x.w, "cannot encode the reply", http.StatusInternalServerError)
		return
	}
	h.Set("Content-Length", strconv.Itoa(len(body)))
	x.w.WriteHeader(httpStatus(res.Status))
	if _, err := x.w.Write(body); err != nil {
		g.log.Debug("write reply", "client", x.client, "id", x.id, "error", err)
	}
}

// httpStatus is status when net/http can send it (it panics on anything
// outside 100–999), else 500.
func httpStatus(status int) int {
	if status < 100 || status > 999 {
		return http.StatusInternalServerError
	}
	return status
}

// readBody reads the request body up to the size limit of model: its own
// (the registry's, as on MQTT), else the gateway's.
func (g *gateway) readBody(w http.ResponseWriter, r *http.Request, model string) ([]byte, *api.Error) {
	limit := g.maxBody
	if g.models != nil {
		if l := g.models.MaxRequestSize(model); l > 0 {
			limit = int64(l)
		}
	}
	if r.ContentLength > limit {
		return nil, api.Errorf(api.PayloadTooLarge, "request body is %d bytes, the limit for model %q is %d", r.ContentLength, model, limit)
	}
	var buf bytes.Buffer
	if r.ContentLength > 0 {
		buf.Grow(int(r.ContentLength))
	}
	if _, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, limit)); err != nil {
		if mbe, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return nil, api.Errorf(api.PayloadTooLarge, "request body is over the limit of %d bytes", mbe.Limit)
		}
		return nil, api.Errorf(api.InvalidRequest, "cannot read the request body: %v", err)
	}
	return buf.Bytes(), nil
}

// resolveStream sets req.Stream from the query parameter stream (when
// present it wins) or an Accept header that asks for text/event-stream, on
// top of the body's own "stream" field.
func resolveStream(r *http.Request, req *api.Request) *api.Error {
	if vs, ok := r.URL.Query()["stream"]; ok {
		v, err := strconv.ParseBool(vs[0])
		if err != nil {
			return api.Errorf(api.InvalidRequest, "query parameter \"stream\": want true or false, got %q", vs[0])
		}
		req.Stream = v
	} else if acceptsSSE(r.Header.Values("Accept")) {
		req.Stream = true
	}
	if req.Stream && req.Inputs != nil {
		return api.Errorf(api.InvalidRequest, "a batch of inputs cannot be streamed: send one \"input\", or ask for a JSON answer")
	}
	return nil
}

func (g *gateway) modelNotFound(model string) *api.Error {
	names := g.models.Names()
	e := api.Errorf(api.ModelNotFound, "model %q does not exist; models: %s", model, strings.Join(names, ", "))
	e.Models = names
	return e
}
