// Package worker owns the transport-independent request core (decode →
// check → infer → encode) and its two transports: the in-process pool fed by
// the embedded broker, and the remote worker, an MQTT client on any broker.
package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/inference"
	"github.com/mqttinfer/mqttinfer/metrics"
)

// Core runs requests on the registered models. Its zero value is not usable:
// Models must be set. Core is safe for concurrent use.
type Core struct {
	// Models are the models served.
	Models *inference.Registry
	// DefaultDeadline bounds a request without deadline_ms, from receipt. 0 = 5s.
	DefaultDeadline time.Duration
	// MaxDeadline caps deadline_ms. 0 = 60s.
	MaxDeadline time.Duration
	// Metrics records latency and outcomes; nil records nothing.
	Metrics *metrics.Metrics
	// Log receives failures; nil discards them.
	Log *slog.Logger
}

// Job is one request as the core sees it, whatever transport brought it.
type Job struct {
	Version  string
	Device   string
	Model    string
	Request  api.Request
	Received time.Time
	// RateLimit is echoed in the reply (nil when no throttle applied).
	RateLimit *api.RateLimit
}

// Deadline is when the job stops being worth answering with a result.
func (c *Core) Deadline(j Job) time.Time {
	d := c.DefaultDeadline
	if d <= 0 {
		d = 5 * time.Second
	}
	maxD := c.maxDeadline()
	if j.Request.DeadlineMS > 0 {
		d = time.Duration(j.Request.DeadlineMS) * time.Millisecond
	}
	return j.Received.Add(min(d, maxD))
}

// maxDeadline is the longest a request may wait for its answer.
func (c *Core) maxDeadline() time.Duration {
	if c.MaxDeadline <= 0 {
		return 60 * time.Second
	}
	return c.MaxDeadline
}

// Run answers one job: a result with the model's output, or an error reply.
// It never panics on a model's failure: a panicking model is answered 500.
func (c *Core) Run(ctx context.Context, j Job) api.Result {
	res, _ := c.Do(ctx, j)
	return res
}

// Do is Run that also returns what the request really cost in throttle
// share of its up-front cost when the model's output is metered
// (inference.Metered), else -1.
func (c *Core) Do(ctx context.Context, j Job) (res api.Result, share float64) {
	res, share = c.do(ctx, j)
	res.RateLimit = j.RateLimit
	return res, share
}

func (c *Core) do(ctx context.Context, j Job) (api.Result, float64) {
	fail := func(e *api.Error) (api.Result, float64) { return api.ErrorResult(j.Request.ID, j.Model, e), -1 }
	m, info, release, e := c.lookup(j)
	if e != nil {
		return fail(e)
	}
	defer release()
	ctx, cancel, e := c.deadline(ctx, j)
	if e != nil {
		return fail(e)
	}
	defer cancel()

	if j.Request.Inputs != nil {
		return c.batch(ctx, j, m, info), -1
	}
	start := time.Now()
	out, err := c.guard(func() (any, error) {
		return m.Infer(ctx, inference.Request{Device: j.Device, Input: j.Request.Input, Params: j.Request.Params})
	})
	elapsed := time.Since(start)
	c.Metrics.Inference(j.Model, elapsed.Seconds())
	if err != nil {
		e := c.classify(ctx, j, err)
		c.Metrics.VersionRequest(j.Model, info.Version, e.Status(), elapsed.Seconds())
		res := api.ErrorResult(j.Request.ID, j.Model, e)
		res.ModelVersion = info.Version
		return res, -1
	}
	c.Metrics.VersionRequest(j.Model, info.Version, api.StatusOK, elapsed.Seconds())
	raw, err := json.Marshal(out)
	if err != nil {
		c.log().Error("encode model output", "model", j.Model, "error", err)
		return fail(api.Errorf(api.InferenceFailed, "model %q returned an output that cannot be encoded", j.Model))
	}
	share := -1.0
	if mt, ok := out.(inference.Metered); ok {
		_, share = mt.Consumed()
	}
	return api.Result{
		ID:           j.Request.ID,
		Model:        j.Model,
		ModelVersion: info.Version,
		Status:       api.StatusOK,
		Output:       raw,
		LatencyMS:    float64(elapsed.Microseconds()) / 1000,
	}, share
}

// batch answers a v2 batch: each input in order, each with its own status,
// under the request's one deadline. The result's status is 200 when the
// batch ran, whatever its items say.
func (c *Core) batch(ctx context.Context, j Job, m inference.Model, info inference.Info) api.Result {
	start := time.Now()
	items := make([]api.Item, len(j.Request.Inputs))
	for i, in := range j.Request.Inputs {
		t0 := time.Now()
		out, err := c.guard(func() (any, error) {
			return m.Infer(ctx, inference.Request{Device: j.Device, Input: in, Params: j.Request.Params})
		})
		c.Metrics.Inference(j.Model, time.Since(t0).Seconds())
		if err == nil {
			items[i].Output, err = json.Marshal(out)
		}
		if err != nil {
			e := c.classify(ctx, j, err)
			items[i] = api.Item{Status: e.Status(), Error: e}
			continue
		}
		items[i].Status = api.StatusOK
	}
	return api.Result{
		ID:           j.Request.ID,
		Model:        j.Model,
		ModelVersion: info.Version,
		Status:       api.StatusOK,
		Outputs:      items,
		LatencyMS:    float64(time.Since(start).Microseconds()) / 1000,
	}
}

// lookup finds the job's model, and its version, and checks that it can
// serve; release ends the job's hold on the version.
func (c *Core) lookup(j Job) (m inference.Model, info inference.Info, release func(), e *api.Error) {
	release = func() {}
	if j.Request.Cancel {
		return nil, inference.Info{}, release, api.Errorf(api.InvalidRequest, "no running request with id %q to cancel", j.Request.ID)
	}
	m, ok := c.Models.Get(j.Model)
	if !ok {
		names := c.Models.Names()
		e := api.Errorf(api.ModelNotFound, "model %q does not exist; models: %s", j.Model, strings.Join(names, ", "))
		e.Models = names
		return nil, inference.Info{}, release, e
	}
	if v, ok := m.(inference.Versioned); ok {
		vm, rel, err := v.Acquire(j.Device, j.Request.ModelVersion)
		if err != nil {
			return nil, m.Info(), release, versionError(j.Model, err)
		}
		m, release = vm, rel
	}
	info = m.Info()
	if pinned := j.Request.ModelVersion; pinned != "" && pinned != info.Version {
		return nil, info, release, versionError(j.Model, &inference.VersionError{Model: j.Model, Version: pinned, Versions: []string{info.Version}})
	}
	if info.Unavailable != "" {
		return nil, info, release, api.Errorf(api.ModelUnavailable, "model %q is not available here: %s", j.Model, info.Unavailable)
	}
	return m, info, release, nil
}

// versionError is the reply to a request for a version a model lacks (or
// for a model whose versions cannot serve now).
func versionError(model string, err error) *api.Error {
	var ve *inference.VersionError
	if errors.As(err, &ve) {
		e := api.Errorf(api.VersionNotFound, "model %q has no version %q; versions: %s", model, ve.Version, strings.Join(ve.Versions, ", "))
		e.Versions = ve.Versions
		return e
	}
	return api.Errorf(api.ModelUnavailable, "model %q is not available here: %v", model, err)
}

// deadline bounds ctx by the job's deadline, or says it has passed already.
func (c *Core) deadline(ctx context.Context, j Job) (context.Context, context.CancelFunc, *api.Error) {
	if errors.Is(context.Cause(ctx), errCanceledByDevice) {
		return nil, nil, api.Errorf(api.Canceled, "request %q was canceled by the device", j.Request.ID)
	}
	deadline := c.Deadline(j)
	if now := time.Now(); !now.Before(deadline) {
		return nil, nil, api.Errorf(api.DeadlineExceeded, "request waited %s before a worker took it, past its deadline of %s",
			now.Sub(j.Received).Round(time.Millisecond), deadline.Sub(j.Received))
	}
	ctx, cancel := context.WithDeadline(ctx, deadline)
	return ctx, cancel, nil
}

// guard runs a model call, turning a panic into an error.
func (c *Core) guard(f func() (any, error)) (out any, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("model panicked: %v", p)
		}
	}()
	return f()
}

func (c *Core) classify(ctx context.Context, j Job, err error) *api.Error {
	var ie *inference.InputError
	var ue *inference.UnavailableError
	switch {
	case errors.As(err, &ie):
		return api.Errorf(api.InvalidInput, "%s", ie.Msg)
	case errors.Is(context.Cause(ctx), errCanceledByDevice):
		return api.Errorf(api.Canceled, "request %q was canceled by the device", j.Request.ID)
	case errors.As(err, &ue):
		e := api.Errorf(api.ModelUnavailable, "model %q cannot answer now: %s", j.Model, ue.Msg)
		e.RetryAfterMS = ue.RetryAfter.Milliseconds()
		return e
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded):
		return api.Errorf(api.DeadlineExceeded, "model %q did not finish before the request's deadline", j.Model)
	case errors.Is(err, context.Canceled) || ctx.Err() != nil:
		return api.Errorf(api.Overloaded, "the worker stopped before model %q finished", j.Model)
	}
	c.log().Warn("inference failed", "model", j.Model, "device", j.Device, "id", j.Request.ID, "error", err)
	return api.Errorf(api.InferenceFailed, "model %q failed: %v", j.Model, err)
}

func (c *Core) log() *slog.Logger {
	if c.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Log
}
