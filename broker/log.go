package broker

import (
	"context"
	"log/slog"
)

// quietLogger wraps the logger handed to mochi and demotes its routine
// per-connection noise to debug. mochi logs every non-nil
// OnPublish answer at error level as "publish packet error", including the
// quota-exceeded answers our throttle gives MQTT 5 publishers on purpose;
// those are demoted to debug so a throttled fleet does not flood the log.
func quietLogger(l *slog.Logger) *slog.Logger { return slog.New(quietHandler{l.Handler()}) }

type quietHandler struct{ slog.Handler }

func (h quietHandler) Handle(ctx context.Context, r slog.Record) error {
	// mochi's listeners log every connection that ends without DISCONNECT
	// (EOF, reset) as a warning with an empty message: routine for devices.
	if r.Level == slog.LevelError && r.Message == "publish packet error" || r.Level == slog.LevelWarn && r.Message == "" {
		if !h.Handler.Enabled(ctx, slog.LevelDebug) {
			return nil
		}
		r.Level = slog.LevelDebug
	}
	return h.Handler.Handle(ctx, r)
}

func (h quietHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return quietHandler{h.Handler.WithAttrs(as)}
}

func (h quietHandler) WithGroup(name string) slog.Handler {
	return quietHandler{h.Handler.WithGroup(name)}
}
