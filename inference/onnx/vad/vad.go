package vad

import (
	"context"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/mqttinfer/mqttinfer/inference"
	"github.com/mqttinfer/mqttinfer/inference/onnx"
)

// The audio and frame format of Silero VAD v5 at 16 kHz.
const (
	// SampleRate is the only sample rate accepted, in Hz.
	SampleRate = 16000
	// FrameSamples is the number of new samples in one frame.
	FrameSamples = 512
	// FrameMS is the duration of one frame, in milliseconds.
	FrameMS = FrameSamples * 1000 / SampleRate
	// contextSamples is how many samples of the previous frame the model
	// sees before each frame.
	contextSamples = 64
	// stateLen is the size of the recurrent state, [2, 1, 128].
	stateLen = 2 * 128
)

// FileName is the model file in Config.Dir.
const FileName = "silero_vad_v5.onnx"

// Defaults of Config.
const (
	DefaultMaxSamples = SampleRate * 60
	DefaultMaxStreams = 10000
	DefaultIdleTTL    = 5 * time.Minute
)

// Config sets where the model is and the bounds of its state. The zero
// value of every field but Dir means its default.
type Config struct {
	// Dir is the models directory (.cache/models) holding FileName.
	Dir string
	// Threads is the number of intra-op threads of the session; 0 means 1.
	Threads int
	// MaxSamples is the most samples one request may carry (16,000 a
	// second); 0 or less means DefaultMaxSamples (60 s).
	MaxSamples int
	// MaxStreams is the most device streams kept; past it the least
	// recently used idle stream is dropped. 0 or less means DefaultMaxStreams.
	MaxStreams int
	// IdleTTL is how long a stream may go without a request before
	// EvictIdle drops it. 0 or less means DefaultIdleTTL.
	IdleTTL time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Model is Silero VAD v5 on ONNX Runtime with one audio stream per device.
// It is safe for concurrent use: requests of one device run one at a time,
// in arrival order of the lock; different devices run in parallel on the
// one session.
type Model struct {
	cfg  Config
	info inference.Info

	// closeMu is held for reading while the session runs, and for writing by
	// Close, so that Close never frees a session in use.
	closeMu sync.RWMutex
	sess    *onnx.Session // nil once closed

	mu      sync.Mutex
	streams map[string]*stream
	lru     stream // sentinel of a ring of all streams, most recently used first
}

var (
	_ inference.Model     = (*Model)(nil)
	_ inference.Forgetter = (*Model)(nil)
)

// stream is the carried state of one device's audio.
type stream struct {
	device string

	// guarded by Model.mu
	refs       int  // requests holding the stream; never evicted while > 0
	forgotten  bool // Forget dropped it while held: it goes when released
	lastUsed   int64
	prev, next *stream

	mu sync.Mutex // serializes the device's requests
	st state
}

// state is what a stream carries from one chunk to the next.
type state struct {
	rnn     [stateLen]float32       // the model's recurrent state
	context [contextSamples]float32 // the last samples of the previous frame
	pending []float32               // samples that did not fill a frame yet, < FrameSamples
	frames  int64                   // frames run so far
	track   tracker
}

// pos is the number of samples the stream has received.
func (s *state) pos() int64 { return s.frames*FrameSamples + int64(len(s.pending)) }

// Result is the output of one request.
type Result struct {
	// Frames is the speech probability of each frame completed by this
	// request, rounded to 3 decimals, in order.
	Frames []float64 `json:"frames"`
	// FrameMS is the duration of one frame: 32 ms.
	FrameMS int `json:"frame_ms"`
	// FramesStartMS is where Frames[0] starts in the stream. It is before
	// OffsetMS when samples left over from the previous chunk began it.
	FramesStartMS float64 `json:"frames_start_ms"`
	// Segments are the speech segments that ended in this request, then the
	// one still open at its end, if any.
	Segments []Segment `json:"segments"`
	// Speech is true when Segments is not empty.
	Speech bool `json:"speech"`
	// OffsetMS is where this request's audio starts in the device's stream.
	OffsetMS float64 `json:"offset_ms"`
	// DurationMS is the duration of this request's audio.
	DurationMS float64 `json:"duration_ms"`
	// PendingMS is the audio held back for the next request because it did
	// not fill a frame.
	PendingMS float64 `json:"pending_ms"`

	probs []float32 // Frames unrounded, for tests
}

// Describe is the static catalog entry, for when the model cannot be loaded.
func Describe() inference.Info {
	return inference.Info{
		Name:        "vad",
		Version:     "5",
		Description: "Voice activity detection (Silero VAD v5) on 16 kHz mono audio streamed in chunks per device: a speech probability per 32 ms frame and speech segments.",
		Input:       inputSchema(DefaultMaxSamples),
		Output:      outputSchema,
		Cost:        1,
		License:     "MIT",
		Source:      "npm @ricky0123/vad-web@0.0.31 package/dist/silero_vad_v5.onnx",
	}
}

// New loads FileName from cfg.Dir (onnx.Init must have succeeded), warms the
// session up and measures the latency of one warm 32 ms frame through the
// model (Info().WarmLatencyMS; without JSON decoding).
func New(cfg Config) (*Model, error) {
	if cfg.MaxSamples <= 0 {
		cfg.MaxSamples = DefaultMaxSamples
	}
	if cfg.MaxStreams <= 0 {
		cfg.MaxStreams = DefaultMaxStreams
	}
	if cfg.IdleTTL <= 0 {
		cfg.IdleTTL = DefaultIdleTTL
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if err := onnx.Available(); err != nil {
		return nil, fmt.Errorf("vad: %w", err)
	}
	path := filepath.Join(cfg.Dir, FileName)
	sum, err := onnx.Checksum(path)
	if err != nil {
		return nil, fmt.Errorf("vad: %w (run `make models`)", err)
	}
	sess, err := onnx.Load(path, []string{"input", "state", "sr"}, []string{"output", "stateN"}, onnx.SessionOptions{Threads: cfg.Threads})
	if err != nil {
		return nil, fmt.Errorf("vad: %w", err)
	}
	m := &Model{cfg: cfg, sess: sess, streams: make(map[string]*stream)}
	m.lru.prev, m.lru.next = &m.lru, &m.lru

	// Warm up on frames of a tone, then time a few more: the median is the
	// warm latency of one frame.
	var st state
	frame := make([]float32, FrameSamples)
	for i := range frame {
		frame[i] = float32(0.3 * math.Sin(2*math.Pi*220*float64(i)/SampleRate))
	}
	l := DefaultParams.limits()
	var times []time.Duration
	for i := range 15 {
		t0 := time.Now()
		if _, err := m.process(context.Background(), &st, frame, &l); err != nil {
			sess.Close()
			return nil, fmt.Errorf("vad: warm-up: %w", err)
		}
		if i >= 10 {
			times = append(times, time.Since(t0))
		}
	}
	slices.Sort(times)
	warm := times[len(times)/2]

	m.info = Describe()
	m.info.Input = inputSchema(cfg.MaxSamples)
	m.info.Checksum = sum
	m.info.Runtime = "onnxruntime " + onnx.Version()
	m.info.WarmLatencyMS = math.Round(float64(warm.Microseconds())) / 1000
	return m, nil
}

// Info describes the loaded model for the catalog.
func (m *Model) Info() inference.Info { return m.info }

// Close releases the session, after the requests running on it are done.
// Infer fails after Close.
func (m *Model) Close() error {
	m.closeMu.Lock()
	defer m.closeMu.Unlock()
	if m.sess == nil {
		return nil
	}
	err := m.sess.Close()
	m.sess = nil
	return err
}

// errClosed is returned by Infer after Close.
var errClosed = errors.New("vad: model is closed")

// Infer runs the audio of req.Input through the stream of req.Device and
// returns a Result. Invalid input or params are an inference.InvalidInput
// error; any error leaves the stream as it was, so the device may resend
// the same chunk.
func (m *Model) Infer(ctx context.Context, req inference.Request) (any, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("vad: %w", err)
	}
	p, err := decodeParams(req.Params)
	if err != nil {
		return nil, err
	}
	in, err := decodeInput(req.Input, m.cfg.MaxSamples)
	if err != nil {
		return nil, err
	}
	l := p.limits()

	s := m.acquire(req.Device)
	defer m.release(s)
	s.mu.Lock()
	defer s.mu.Unlock()

	st := s.st // a copy: the stream changes only when the whole chunk succeeded
	if in.reset {
		st = state{}
	}
	res, err := m.process(ctx, &st, in.samples, &l)
	if err != nil {
		return nil, err
	}
	s.st = st
	return *res, nil
}

// process runs samples through st, which it advances, and builds the
// Result. It never writes to the arrays st.pending shared before the call.
func (m *Model) process(ctx context.Context, st *state, samples []float32, l *limits) (*Result, error) {
	res := &Result{
		FrameMS:       FrameMS,
		FramesStartMS: ms(st.frames * FrameSamples),
		OffsetMS:      ms(st.pos()),
		DurationMS:    ms(int64(len(samples))),
		Segments:      []Segment{},
	}
	nframes := (len(st.pending) + len(samples)) / FrameSamples
	res.Frames = make([]float64, 0, nframes)
	res.probs = make([]float32, 0, nframes)
	if nframes > 0 {
		m.closeMu.RLock()
		defer m.closeMu.RUnlock()
		if m.sess == nil {
			return nil, errClosed
		}
	}

	in := make([]float32, contextSamples+FrameSamples)
	sr := []int64{SampleRate}
	rest := samples
	for range nframes {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("vad: %w", err)
		}
		copy(in, st.context[:])
		n := copy(in[contextSamples:], st.pending)
		k := copy(in[contextSamples+n:], rest)
		rest = rest[k:]
		st.pending = nil

		out, err := m.sess.Run([]onnx.Tensor{
			onnx.Float32(in, 1, contextSamples+FrameSamples),
			onnx.Float32(st.rnn[:], 2, 1, 128),
			onnx.Int64(sr, 1),
		})
		if err != nil {
			return nil, fmt.Errorf("vad: %w", err)
		}
		if len(out) != 2 || len(out[0].F32) != 1 || len(out[1].F32) != stateLen {
			return nil, fmt.Errorf("vad: the model returned outputs of shapes %v, want [1 1] and [2 1 128]: is %s the Silero VAD v5 file?", shapes(out), FileName)
		}
		p := out[0].F32[0]
		if !(p >= 0 && p <= 1) {
			return nil, fmt.Errorf("vad: the model returned speech probability %v", p)
		}
		copy(st.rnn[:], out[1].F32)
		copy(st.context[:], in[len(in)-contextSamples:])

		pos := st.frames * FrameSamples
		st.frames++
		res.probs = append(res.probs, p)
		res.Frames = append(res.Frames, roundProb(p))
		if seg, ok := st.track.step(p, pos, l); ok {
			res.Segments = append(res.Segments, seg)
		}
	}
	if nframes == 0 {
		st.pending = append(append(make([]float32, 0, len(st.pending)+len(rest)), st.pending...), rest...)
	} else if len(rest) > 0 {
		st.pending = append([]float32(nil), rest...)
	}
	if seg, ok := st.track.open(st.pos(), l); ok {
		res.Segments = append(res.Segments, seg)
	}
	res.Speech = len(res.Segments) > 0
	res.PendingMS = ms(int64(len(st.pending)))
	return res, nil
}

func shapes(ts []onnx.Tensor) [][]int64 {
	s := make([][]int64, len(ts))
	for i, t := range ts {
		s[i] = t.Shape
	}
	return s
}

// acquire returns the stream of device, creating it (and evicting the least
// recently used idle stream past MaxStreams) when it does not exist, marks
// it used and holds a reference to it until release.
func (m *Model) acquire(device string) *stream {
	now := m.cfg.Now().UnixNano()
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.streams[device]
	if s != nil && s.forgotten {
		// Forgotten while a request held it: a new stream starts afresh;
		// the old one is dropped by its last release.
		m.remove(s)
		s = nil
	}
	if s == nil {
		s = &stream{device: device}
		m.streams[device] = s
		m.link(s)
	} else {
		m.unlink(s)
		m.link(s)
	}
	s.lastUsed = now
	s.refs++
	m.shrink()
	return s
}

// release drops the reference acquire took, marking the stream used now.
func (m *Model) release(s *stream) {
	now := m.cfg.Now().UnixNano()
	m.mu.Lock()
	defer m.mu.Unlock()
	s.refs--
	if s.forgotten {
		if s.refs == 0 && m.streams[s.device] == s {
			m.remove(s)
		}
		return
	}
	s.lastUsed = now
	m.unlink(s)
	m.link(s)
	m.shrink()
}

// shrink drops the least recently used streams that no request holds
// until at most MaxStreams are left. Streams in use are never dropped, so
// there may be more while every stream is busy. m.mu must be held.
func (m *Model) shrink() {
	victim := m.lru.prev
	for len(m.streams) > m.cfg.MaxStreams && victim != &m.lru {
		prev := victim.prev
		if victim.refs == 0 {
			m.remove(victim)
		}
		victim = prev
	}
}

// link puts s first in the LRU ring. m.mu must be held.
func (m *Model) link(s *stream) {
	s.prev, s.next = &m.lru, m.lru.next
	m.lru.next.prev = s
	m.lru.next = s
}

// unlink takes s out of the LRU ring. m.mu must be held.
func (m *Model) unlink(s *stream) {
	s.prev.next, s.next.prev = s.next, s.prev
	s.prev, s.next = nil, nil
}

// remove drops s from the table and the LRU ring. m.mu must be held.
func (m *Model) remove(s *stream) {
	delete(m.streams, s.device)
	m.unlink(s)
}

// Forget drops the streams of the devices match selects
// (inference.Forgetter); a stream a request holds is dropped when it is
// released, and the device's next request starts a new one.
func (m *Model) Forget(match func(device string) bool) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for d, s := range m.streams {
		if !match(d) {
			continue
		}
		if s.refs == 0 {
			m.remove(s)
		} else {
			s.forgotten = true
		}
		n++
	}
	return n
}

// Len returns the number of device streams tracked.
func (m *Model) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.streams)
}

// EvictIdle drops every stream that has gone longer than IdleTTL without a
// request, and returns how many it dropped. A device whose stream was
// dropped starts over at offset 0 with a fresh model state.
func (m *Model) EvictIdle() int {
	cutoff := m.cfg.Now().Add(-m.cfg.IdleTTL).UnixNano()
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for s := m.lru.prev; s != &m.lru && s.lastUsed < cutoff; {
		prev := s.prev
		if s.refs == 0 {
			m.remove(s)
			n++
		}
		s = prev
	}
	return n
}

// Run calls EvictIdle every IdleTTL/4 (at least every minute, at most every
// second) until ctx is done. It blocks; the caller owns the goroutine.
func (m *Model) Run(ctx context.Context) { inference.EvictEvery(ctx, m.cfg.IdleTTL, m.EvictIdle) }
