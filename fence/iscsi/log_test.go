package iscsi

import (
	"context"
	"log/slog"
	"testing"
)

// testLogger sends slog output to t.Log, so a failing test shows the session's story.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(&tlogHandler{t: t})
}

type tlogHandler struct {
	t     *testing.T
	attrs []slog.Attr
}

func (h *tlogHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *tlogHandler) Handle(_ context.Context, r slog.Record) error {
	msg := r.Level.String() + " " + r.Message
	for _, a := range h.attrs {
		msg += " " + a.String()
	}
	r.Attrs(func(a slog.Attr) bool {
		msg += " " + a.String()
		return true
	})
	defer func() { recover() }() // logging after the test ended must not panic
	h.t.Log(msg)
	return nil
}

func (h *tlogHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &tlogHandler{t: h.t, attrs: append(append([]slog.Attr{}, h.attrs...), as...)}
}

func (h *tlogHandler) WithGroup(string) slog.Handler { return h }
