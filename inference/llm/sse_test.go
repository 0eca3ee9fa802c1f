package llm

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"testing/iotest"
)

// readAll reads every event of r and the error that ended the stream.
func readAll(r io.Reader, max int) ([]SSEEvent, error) {
	s := NewSSEReader(r)
	s.MaxEventBytes = max
	var evs []SSEEvent
	for {
		ev, err := s.Next()
		if err != nil {
			return evs, err
		}
		evs = append(evs, ev)
	}
}

func TestSSEReader(t *testing.T) {
	tests := []struct {
		name, in string
		want     []SSEEvent
		err      error
	}{
		{"one event", "data: hello\n\n", []SSEEvent{{Data: "hello"}}, io.EOF},
		{"empty stream", "", nil, io.EOF},
		{"CRLF", "data: a\r\n\r\ndata: b\r\n\r\n", []SSEEvent{{Data: "a"}, {Data: "b"}}, io.EOF},
		{"CR", "data: a\r\rdata: b\r\r", []SSEEvent{{Data: "a"}, {Data: "b"}}, io.EOF},
		{"mixed line ends", "data: a\r\n\ndata: b\r\rdata: c\n\r\n", []SSEEvent{{Data: "a"}, {Data: "b"}, {Data: "c"}}, io.EOF},
		{"multi-line data", "data: {\"a\":\ndata: 1}\n\n", []SSEEvent{{Data: "{\"a\":\n1}"}}, io.EOF},
		{"multi-line data, CRLF", "data: a\r\ndata: b\r\n\r\n", []SSEEvent{{Data: "a\nb"}}, io.EOF},
		{"multi-line data, CR", "data: a\rdata: b\r\r", []SSEEvent{{Data: "a\nb"}}, io.EOF},
		{"no space after colon", "data:x\n\n", []SSEEvent{{Data: "x"}}, io.EOF},
		{"only one space is dropped", "data:  x \n\n", []SSEEvent{{Data: " x "}}, io.EOF},
		{"empty data dispatches", "data:\n\ndata\n\n", []SSEEvent{{Data: ""}, {Data: ""}}, io.EOF},
		{"two empty data lines", "data\ndata\n\n", []SSEEvent{{Data: "\n"}}, io.EOF},
		{"comments", ": keep-alive\n\n:\ndata: a\n: inside\n\n: OPENROUTER PROCESSING\n\n", []SSEEvent{{Data: "a"}}, io.EOF},
		{"blank lines between events", "\n\n\ndata: a\n\n\n\ndata: b\n\n", []SSEEvent{{Data: "a"}, {Data: "b"}}, io.EOF},
		{"event type", "event: ping\ndata: 1\n\ndata: 2\n\n", []SSEEvent{{Type: "ping", Data: "1"}, {Data: "2"}}, io.EOF},
		{"event type without data is dropped", "event: ping\n\ndata: 2\n\n", []SSEEvent{{Data: "2"}}, io.EOF},
		{"id carries over", "id: 7\ndata: a\n\ndata: b\n\nid\ndata: c\n\n", []SSEEvent{{Data: "a", ID: "7"}, {Data: "b", ID: "7"}, {Data: "c"}}, io.EOF},
		{"id with NUL is ignored", "id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n", []SSEEvent{{Data: "a", ID: "1"}, {Data: "b", ID: "1"}}, io.EOF},
		{"retry and unknown fields", "retry: 1000\nfoo: bar\ndata: a\n\n", []SSEEvent{{Data: "a"}}, io.EOF},
		{"field names are case-sensitive", "Data: a\ndata: b\n\n", []SSEEvent{{Data: "b"}}, io.EOF},
		{"llama.cpp error field", "error: {\"code\":500}\n\ndata: [DONE]\n\n", []SSEEvent{{Type: "error", Data: "{\"code\":500}"}, {Data: "[DONE]"}}, io.EOF},
		{"byte order mark", "\xEF\xBB\xBFdata: a\n\n", []SSEEvent{{Data: "a"}}, io.EOF},
		{"only the first BOM", "\xEF\xBB\xBF\xEF\xBB\xBFdata: a\n\ndata: b\n\n", []SSEEvent{{Data: "b"}}, io.EOF},
		{"UTF-8 kept", "data: Grüße, 世界\n\n", []SSEEvent{{Data: "Grüße, 世界"}}, io.EOF},
		{"cut in an event", "data: a\n\ndata: b\n", []SSEEvent{{Data: "a"}}, io.ErrUnexpectedEOF},
		{"cut in a line", "data: a\n\ndata: b", []SSEEvent{{Data: "a"}}, io.ErrUnexpectedEOF},
		{"cut after a comment", "data: a\n\n: keep", []SSEEvent{{Data: "a"}}, io.ErrUnexpectedEOF},
		{"line too long", "data: " + strings.Repeat("x", 100) + "\n\n", nil, ErrEventTooLarge},
		{"event too large", strings.Repeat("data: xxxxxxxxxx\n", 10) + "\n", nil, ErrEventTooLarge},
		{"at the limit", "data: " + strings.Repeat("x", 58) + "\n\n", []SSEEvent{{Data: strings.Repeat("x", 58)}}, io.EOF},
	}
	readers := map[string]func(string) io.Reader{
		"whole":    func(s string) io.Reader { return strings.NewReader(s) },
		"one byte": func(s string) io.Reader { return iotest.OneByteReader(strings.NewReader(s)) },
		"half":     func(s string) io.Reader { return iotest.HalfReader(strings.NewReader(s)) },
	}
	for _, tt := range tests {
		for rname, reader := range readers {
			t.Run(tt.name+"/"+rname, func(t *testing.T) {
				evs, err := readAll(reader(tt.in), 64)
				if !errors.Is(err, tt.err) {
					t.Errorf("error %v, want %v", err, tt.err)
				}
				if fmt.Sprintf("%q", evs) != fmt.Sprintf("%q", tt.want) {
					t.Errorf("events %q\nwant   %q", evs, tt.want)
				}
			})
		}
	}
}

func TestSSEReaderError(t *testing.T) {
	errRead := errors.New("connection reset")
	evs, err := readAll(io.MultiReader(strings.NewReader("data: a\n\ndata: b"), iotest.ErrReader(errRead)), 0)
	if !errors.Is(err, errRead) || len(evs) != 1 {
		t.Errorf("events %q, error %v", evs, err)
	}
}

// TestSSEReaderOverHTTP reads events from a real http.Server that sends
// them in steps: each step waits until the client has the event it
// completes, so a reader that held an event back waiting for more bytes
// would hang here instead of passing.
func TestSSEReaderOverHTTP(t *testing.T) {
	steps := []struct {
		send string
		want *SSEEvent // the event this step completes, if any
	}{
		{": keep-alive\n\n", nil},
		{"data: one\n\n", &SSEEvent{Data: "one"}},
		{"da", nil},
		{"ta: tw", nil},
		{"o\r", nil},
		{"\n\r", &SSEEvent{Data: "two"}}, // ends with a CR whose LF is not sent yet
		{"\ndata: three\r\r", &SSEEvent{Data: "three"}}, // that LF belongs to the CR; then a CR-only event end
		{"data: {\"a\":\ndata: 4}\n\n", &SSEEvent{Data: "{\"a\":\n4}"}},
		{"event: x\ndata: five\n", nil},
		{"\n", &SSEEvent{Type: "x", Data: "five"}},
		{"data: six", nil}, // the server closes the connection here
	}
	next := make(chan struct{})
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		rc := http.NewResponseController(w)
		for _, st := range steps {
			if _, err := io.WriteString(w, st.send); err != nil {
				return
			}
			if err := rc.Flush(); err != nil {
				return
			}
			if st.want != nil {
				select {
				case <-next:
				case <-r.Context().Done():
					return
				}
			}
		}
		conn, _, err := rc.Hijack()
		if err == nil {
			_ = conn.Close() // drop the connection mid-event
		}
	})
	resp, err := http.Get(b.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	s := NewSSEReader(resp.Body)
	for i, st := range steps {
		if st.want == nil {
			continue
		}
		ev, err := s.Next()
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if ev != *st.want {
			t.Errorf("step %d: event %q, want %q", i, ev, *st.want)
		}
		next <- struct{}{}
	}
	if ev, err := s.Next(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("after the drop: %q, %v; want io.ErrUnexpectedEOF", ev, err)
	}
	http.DefaultClient.CloseIdleConnections()
}
