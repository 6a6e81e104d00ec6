# glance-sidecar: `make build` builds the binary into bin/, `make test` runs everything CI runs.
GO        ?= go
STATICCHECK_VERSION ?= v0.8.2
FUZZTIME  ?= 8s
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

.PHONY: build test deps lint unit fuzz-smoke bench

build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o bin/glance-sidecar ./cmd/glance-sidecar

# The README's test command: installs missing Debian tools, then lint, unit and fuzz smoke.
test: deps lint unit fuzz-smoke

deps:
	scripts/install-deps

lint:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

unit:
	$(GO) test -race -count=1 -shuffle=on ./...

fuzz-smoke:
	FUZZTIME=$(FUZZTIME) scripts/fuzz-smoke

# Benchmarks are not part of `make test`; see README.md for what they measure.
bench:
	$(GO) test -run '^$$' -bench . -benchmem -count 6 ./inspect/ | tee bench.out
