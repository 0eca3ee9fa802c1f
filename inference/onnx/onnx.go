// Package onnx is the service's thin layer over ONNX Runtime
// (github.com/yalue/onnxruntime_go): it loads the shared library once per
// process, creates sessions with a chosen number of intra-op threads, and
// runs them on plain Go tensors so that model packages never touch cgo.
//
// Built without cgo (CGO_ENABLED=0), the package compiles to a stub whose
// Init reports that the runtime is unavailable: the service then serves its
// pure-Go models and the catalog says why the others are missing.
package onnx

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// LibraryName is the file name of the ONNX Runtime shared library that
// `make models` fetches (from npm onnxruntime-node@1.30.0).
const LibraryName = "libonnxruntime.so.1"

// ErrUnavailable is wrapped by every error that means the runtime cannot be
// used in this process (no cgo, library missing, failed to load).
var ErrUnavailable = errors.New("ONNX Runtime is unavailable")

// Tensor is a dense tensor of float32 or int64 elements, row-major. Exactly
// one of F32 and I64 is used; its length is the product of Shape.
type Tensor struct {
	Shape []int64
	F32   []float32
	I64   []int64
}

// Len is the number of elements the shape holds.
func (t Tensor) Len() int64 {
	n := int64(1)
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// Float32 returns a float32 tensor of the given shape over data.
func Float32(data []float32, shape ...int64) Tensor { return Tensor{Shape: shape, F32: data} }

// Int64 returns an int64 tensor of the given shape over data.
func Int64(data []int64, shape ...int64) Tensor { return Tensor{Shape: shape, I64: data} }

// SessionOptions configure a session.
type SessionOptions struct {
	// Threads is the number of intra-op threads; 0 means 1. ONNX Runtime's
	// own default (every core per session) loses when many goroutines run
	// sessions at once, as the worker pool does.
	Threads int
}

// Library returns the path of the runtime library in dir, or an error
// wrapping ErrUnavailable that says how to get it.
func Library(dir string) (string, error) {
	p, err := filepath.Abs(filepath.Join(dir, LibraryName))
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("%w: %s not found (run `make models`)", ErrUnavailable, p)
	}
	return p, nil
}

func (t Tensor) check() error {
	n := t.Len()
	switch {
	case t.F32 != nil && t.I64 != nil:
		return errors.New("tensor has both float32 and int64 data")
	case t.F32 != nil && int64(len(t.F32)) != n, t.I64 != nil && int64(len(t.I64)) != n:
		return fmt.Errorf("tensor shape %v wants %d elements", t.Shape, n)
	case t.F32 == nil && t.I64 == nil && n != 0:
		return fmt.Errorf("tensor of shape %v has no data", t.Shape)
	}
	return nil
}

// Checksum returns the sha256 of the file at path, hex: the catalog's
// record of which weights a model actually loaded.
func Checksum(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// TensorInfo is an input or output a model file declares.
type TensorInfo struct {
	Name  string
	DType string  // "float32", "int64", ...; "" for a non-tensor value
	Shape []int64 // -1 for a dynamic dimension
}
