package config

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// The rate of a LoginLog: a burst of lines, then one a second.
const (
	loginLogBurst = 10
	loginLogEvery = time.Second
	// maxLoggedValue bounds each string a line shows, in bytes.
	maxLoggedValue = 128
)

// LoginLog logs refused logins at INFO, rate-limited so that a flood of bad
// logins cannot fill the disk: a burst of 10 lines, then one a second. The
// first line after some were left out says how many ("suppressed"), and a
// second after a line is left out a summary line gives the count if no
// other line did, so at most two lines a second follow the burst. The zero
// value is not usable: use NewLoginLog. Safe for concurrent use.
type LoginLog struct {
	log *slog.Logger
	now func() time.Time

	mu         sync.Mutex
	lim        *rate.Limiter
	suppressed int
	flushing   bool // a flush is scheduled
}

// NewLoginLog returns a LoginLog writing to log; nil discards.
func NewLoginLog(log *slog.Logger) *LoginLog {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &LoginLog{log: log, now: time.Now, lim: rate.NewLimiter(rate.Every(loginLogEvery), loginLogBurst)}
}

// Refused logs a refused login with msg and the key-value pairs args
// (username, remote address, reason…), unless the rate is spent. String
// values are cut at 128 bytes.
func (l *LoginLog) Refused(msg string, args ...any) {
	if !l.log.Enabled(context.Background(), slog.LevelInfo) {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.lim.AllowN(l.now(), 1) {
		l.suppressed++
		l.scheduleFlush()
		return
	}
	for i := 1; i < len(args); i += 2 {
		if s, ok := args[i].(string); ok && len(s) > maxLoggedValue {
			args[i] = s[:maxLoggedValue] + "…" // a client's username or id can be 64 KiB
		}
	}
	if l.suppressed > 0 {
		args = append(args, "suppressed", l.suppressed)
		l.suppressed = 0
	}
	l.log.Info(msg, args...)
}

// scheduleFlush makes sure the count of left-out lines is logged within a
// second, even if no other login is refused. Call with l.mu held.
func (l *LoginLog) scheduleFlush() {
	if l.flushing {
		return
	}
	l.flushing = true
	time.AfterFunc(loginLogEvery, l.flush)
}

func (l *LoginLog) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.flushing = false
	if l.suppressed == 0 {
		return
	}
	l.log.Info("refused logins not logged", "suppressed", l.suppressed)
	l.suppressed = 0
}
