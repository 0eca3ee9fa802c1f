package llm

import (
	"bufio"
	"bytes"
	"errors"
	"io"
)

// DefaultMaxEventBytes is the largest line or event data an SSEReader takes
// when MaxEventBytes is not set: 1 MiB, far above the few hundred bytes of a
// chat chunk.
const DefaultMaxEventBytes = 1 << 20

// ErrEventTooLarge is returned by SSEReader.Next for a line or an event's
// data larger than the reader's limit.
var ErrEventTooLarge = errors.New("sse: line or event larger than the limit")

// SSEEvent is one server-sent event.
type SSEEvent struct {
	// Type is the event type from the "event" field; "" means the default
	// type, "message".
	Type string
	// Data is the event's data lines joined with "\n".
	Data string
	// ID is the last event id the stream has set, from this event or an
	// earlier one.
	ID string
}

// SSEReader reads server-sent events (the text/event-stream format of the
// WHATWG HTML standard) from a byte stream, one event per call to Next.
//
// It follows the standard: lines end with CRLF, LF or a lone CR; a leading
// byte order mark is skipped; a line starting with ':' is a comment (servers
// send them as keep-alives) and is skipped; "field: value" loses one space
// after the colon; several data lines in one event are joined with "\n"; a
// blank line ends an event, and an event without data lines is not
// dispatched; "retry" and unknown fields are ignored. An event cut off by the
// end of the stream is not dispatched: Next returns io.ErrUnexpectedEOF.
//
// One extension: a field named "error" is read as the data of an event of
// type "error". llama.cpp servers write mid-stream failures as an
// "error: {...}" line where "event: error" and "data: {...}" was meant.
//
// An SSEReader buffers its input and is not safe for concurrent use.
type SSEReader struct {
	// MaxEventBytes bounds a line and an event's data, in bytes; 0 means
	// DefaultMaxEventBytes. Set it before the first call to Next.
	MaxEventBytes int

	r       *bufio.Reader
	started bool // a leading byte order mark has been looked for
	skipLF  bool // the last line ended with a CR: a LF right after it belongs to it
	line    []byte
	data    []byte
	hasData bool // a data field was seen since the last dispatch (data may be empty)
	typ     string
	id      string
}

// NewSSEReader returns a reader of the events in r.
func NewSSEReader(r io.Reader) *SSEReader {
	return &SSEReader{r: bufio.NewReaderSize(r, 4096)}
}

// Next returns the next event. At the clean end of the stream it returns
// io.EOF; when the stream ends in the middle of a line or an event it
// returns io.ErrUnexpectedEOF; errors of the underlying reader are returned
// as they are.
func (s *SSEReader) Next() (SSEEvent, error) {
	for {
		line, err := s.readLine()
		if err != nil {
			if err == io.EOF && s.hasData {
				err = io.ErrUnexpectedEOF
			}
			return SSEEvent{}, err
		}
		if len(line) == 0 {
			if !s.hasData {
				s.typ = ""
				continue
			}
			ev := SSEEvent{Type: s.typ, Data: string(s.data), ID: s.id}
			s.data, s.hasData, s.typ = s.data[:0], false, ""
			return ev, nil
		}
		if line[0] == ':' {
			continue
		}
		name, value := line, line[len(line):]
		if i := bytes.IndexByte(line, ':'); i >= 0 {
			name, value = line[:i], line[i+1:]
			if len(value) > 0 && value[0] == ' ' {
				value = value[1:]
			}
		}
		switch string(name) {
		case "data":
			if err := s.appendData(value); err != nil {
				return SSEEvent{}, err
			}
		case "error":
			s.typ = "error"
			if err := s.appendData(value); err != nil {
				return SSEEvent{}, err
			}
		case "event":
			s.typ = string(value)
		case "id":
			if bytes.IndexByte(value, 0) < 0 {
				s.id = string(value)
			}
		}
	}
}

func (s *SSEReader) appendData(value []byte) error {
	if s.hasData {
		s.data = append(s.data, '\n')
	}
	s.data = append(s.data, value...)
	s.hasData = true
	if len(s.data) > s.max() {
		return ErrEventTooLarge
	}
	return nil
}

func (s *SSEReader) max() int {
	if s.MaxEventBytes > 0 {
		return s.MaxEventBytes
	}
	return DefaultMaxEventBytes
}

// readLine returns the next line without its end. The slice is valid until
// the next call. It returns io.EOF at the end of the stream after a
// complete line, io.ErrUnexpectedEOF after a partial one.
func (s *SSEReader) readLine() ([]byte, error) {
	s.line = s.line[:0]
	for {
		if _, err := s.r.Peek(1); err != nil {
			if err == io.EOF && len(s.line) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		if !s.started {
			s.started = true
			if b, _ := s.r.Peek(1); b[0] == 0xEF {
				if bom, _ := s.r.Peek(3); bytes.Equal(bom, []byte{0xEF, 0xBB, 0xBF}) {
					_, _ = s.r.Discard(3)
					continue
				}
			}
		}
		buf, _ := s.r.Peek(s.r.Buffered())
		if s.skipLF {
			s.skipLF = false
			if buf[0] == '\n' {
				_, _ = s.r.Discard(1)
				continue
			}
		}
		// Find the first CR or LF; IndexByte is vectorised, IndexAny is not.
		i := bytes.IndexByte(buf, '\n')
		end := buf
		if i >= 0 {
			end = buf[:i]
		}
		if j := bytes.IndexByte(end, '\r'); j >= 0 {
			i = j
		}
		if i < 0 {
			s.line = append(s.line, buf...)
			_, _ = s.r.Discard(len(buf))
			if len(s.line) > s.max() {
				return nil, ErrEventTooLarge
			}
			continue
		}
		n := i + 1
		if buf[i] == '\r' {
			switch {
			case i+1 == len(buf):
				s.skipLF = true // the LF, if any, is not here yet
			case buf[i+1] == '\n':
				n++
			}
		}
		var line []byte
		if len(s.line) == 0 {
			// The whole line is in the buffer: hand it out without a copy.
			// Discard does not move the buffer; the next Peek may.
			line = buf[:i]
		} else {
			s.line = append(s.line, buf[:i]...)
			line = s.line
		}
		_, _ = s.r.Discard(n)
		if len(line) > s.max() {
			return nil, ErrEventTooLarge
		}
		return line, nil
	}
}
