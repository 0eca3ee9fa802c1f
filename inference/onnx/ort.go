//go:build cgo

package onnx

import (
	"fmt"
	"sync"

	ort "github.com/yalue/onnxruntime_go"
)

var (
	initOnce sync.Once
	errInit  error = fmt.Errorf("%w: not initialised", ErrUnavailable)
	inited   bool
)

// Init loads the runtime library at libPath and initialises the
// environment, once per process; later calls return the first result. It
// must be called before Load.
func Init(libPath string) error {
	initOnce.Do(func() {
		ort.SetSharedLibraryPath(libPath)
		if err := ort.InitializeEnvironment(ort.WithLogLevelError()); err != nil {
			errInit = fmt.Errorf("%w: load %s: %v", ErrUnavailable, libPath, err)
			return
		}
		errInit, inited = nil, true
	})
	return errInit
}

// Available reports nil once Init succeeded, else why the runtime is unavailable.
func Available() error { return errInit }

// Version is the loaded runtime's version ("" before Init).
func Version() string {
	if !inited {
		return ""
	}
	return ort.GetVersion()
}

// Session is a loaded model. Run is safe for concurrent use (ONNX Runtime
// sessions are), so one Session serves a whole worker pool.
type Session struct {
	s       *ort.DynamicAdvancedSession
	inputs  []string
	outputs []string
}

// Load creates a session for the model file at path with the named inputs
// and outputs.
func Load(path string, inputs, outputs []string, opts SessionOptions) (*Session, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	so, err := ort.NewSessionOptions()
	if err != nil {
		return nil, fmt.Errorf("session options: %w", err)
	}
	defer so.Destroy()
	if err := so.SetIntraOpNumThreads(max(opts.Threads, 1)); err != nil {
		return nil, err
	}
	if err := so.SetInterOpNumThreads(1); err != nil {
		return nil, err
	}
	s, err := ort.NewDynamicAdvancedSession(path, inputs, outputs, so)
	if err != nil {
		return nil, fmt.Errorf("load model %s: %w", path, err)
	}
	return &Session{s: s, inputs: inputs, outputs: outputs}, nil
}

// Run runs the model on one tensor per input, in the order given to Load,
// and returns one tensor per output (float32 or int64, copied into Go memory).
func (s *Session) Run(in []Tensor) ([]Tensor, error) {
	if len(in) != len(s.inputs) {
		return nil, fmt.Errorf("model takes %d inputs, got %d", len(s.inputs), len(in))
	}
	values := make([]ort.Value, len(in))
	defer func() {
		for _, v := range values {
			if v != nil {
				v.Destroy()
			}
		}
	}()
	for i, t := range in {
		if err := t.check(); err != nil {
			return nil, fmt.Errorf("input %s: %w", s.inputs[i], err)
		}
		// onnxruntime_go makes no rank-0 tensors: a scalar goes as one
		// element of rank 1, which ONNX Runtime takes for a scalar input.
		shape := ort.NewShape(t.Shape...)
		if len(shape) == 0 {
			shape = ort.NewShape(1)
		}
		// Only a tensor that was made goes into values (a typed nil
		// would be destroyed).
		if t.I64 != nil {
			v, err := ort.NewTensor(shape, t.I64)
			if err != nil {
				return nil, fmt.Errorf("input %s: %w", s.inputs[i], err)
			}
			values[i] = v
		} else {
			v, err := ort.NewTensor(shape, t.F32)
			if err != nil {
				return nil, fmt.Errorf("input %s: %w", s.inputs[i], err)
			}
			values[i] = v
		}
	}
	outs := make([]ort.Value, len(s.outputs))
	if err := s.s.Run(values, outs); err != nil {
		return nil, fmt.Errorf("run: %w", err)
	}
	res := make([]Tensor, len(outs))
	for i, v := range outs {
		if v == nil {
			continue
		}
		shape := []int64(v.GetShape())
		switch t := v.(type) {
		case *ort.Tensor[float32]:
			res[i] = Tensor{Shape: shape, F32: append([]float32(nil), t.GetData()...)}
		case *ort.Tensor[int64]:
			res[i] = Tensor{Shape: shape, I64: append([]int64(nil), t.GetData()...)}
		default:
			v.Destroy()
			return nil, fmt.Errorf("output %s: unsupported element type %v", s.outputs[i], v.DataType())
		}
		v.Destroy()
	}
	return res, nil
}

// Close releases the session.
func (s *Session) Close() error { return s.s.Destroy() }

// Inspect reads the inputs and outputs a model file declares, without
// keeping a session: their names, element types ("float32", "int64",
// ...; "" for a non-tensor) and shapes (-1 for a dynamic dimension).
func Inspect(path string) (inputs, outputs []TensorInfo, err error) {
	if err := Available(); err != nil {
		return nil, nil, err
	}
	in, out, err := ort.GetInputOutputInfo(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read model %s: %w", path, err)
	}
	return tensorInfos(in), tensorInfos(out), nil
}

func tensorInfos(infos []ort.InputOutputInfo) []TensorInfo {
	out := make([]TensorInfo, len(infos))
	for i, io := range infos {
		out[i] = TensorInfo{Name: io.Name, Shape: []int64(io.Dimensions)}
		if io.OrtValueType == ort.ONNXTypeTensor {
			out[i].DType = dtypeNames[io.DataType]
			if out[i].DType == "" {
				out[i].DType = io.DataType.String()
			}
		}
	}
	return out
}

var dtypeNames = map[ort.TensorElementDataType]string{
	ort.TensorElementDataTypeFloat:  "float32",
	ort.TensorElementDataTypeDouble: "float64",
	ort.TensorElementDataTypeInt64:  "int64",
	ort.TensorElementDataTypeInt32:  "int32",
	ort.TensorElementDataTypeInt16:  "int16",
	ort.TensorElementDataTypeInt8:   "int8",
	ort.TensorElementDataTypeUint8:  "uint8",
	ort.TensorElementDataTypeBool:   "bool",
	ort.TensorElementDataTypeString: "string",
}
