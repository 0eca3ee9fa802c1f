//go:build !cgo

package onnx

import "fmt"

var errNoCgo = fmt.Errorf("%w: this binary was built without cgo (CGO_ENABLED=0)", ErrUnavailable)

// Init reports that the runtime is unavailable: this build has no cgo.
func Init(libPath string) error { return errNoCgo }

// Available reports why the runtime is unavailable.
func Available() error { return errNoCgo }

// Version is "" in a build without cgo.
func Version() string { return "" }

// Session is a loaded model; it cannot be created without cgo.
type Session struct{}

// Load fails: this build has no cgo.
func Load(path string, inputs, outputs []string, opts SessionOptions) (*Session, error) {
	return nil, errNoCgo
}

// Run fails: this build has no cgo.
func (s *Session) Run(in []Tensor) ([]Tensor, error) { return nil, errNoCgo }

// Close does nothing.
func (s *Session) Close() error { return nil }

// Inspect fails: this build has no cgo.
func Inspect(path string) (inputs, outputs []TensorInfo, err error) { return nil, nil, errNoCgo }
