# glance-sidecar: `make build` builds the binary into bin/, `make test` runs everything CI runs.
GO        ?= go
STATICCHECK_VERSION ?= v0.8.2
FUZZTIME  ?= 8s
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

.PHONY: build demo test check deps lint unit fuzz-smoke integration bench

build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o bin/glance-sidecar ./cmd/glance-sidecar

# The README's first command: the test cloud, serve against it, four sample images and what
# the sidecar wrote on them. `scripts/demo stop` ends it.
demo:
	scripts/demo

# The README's test command: installs what is missing, then lint, unit tests, a fuzz smoke
# and the integration tests against the test cloud (brought up and down by scripts/integration).
test: deps lint unit fuzz-smoke integration

# The quick loop while developing: no fuzzing, no cloud.
check: lint unit

deps:
	scripts/install-deps

lint:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags integration ./...
	$(GO) vet -tags devstack ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) -tags integration ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) -tags devstack ./...
	shellcheck -x scripts/* test/cloud/*.sh test/bench/*.sh test/devstack/*.sh devstack/plugin.sh devstack/settings .ci/run
	scripts/check-systemd-unit

unit:
	$(GO) test -race -count=1 -shuffle=on ./...

fuzz-smoke:
	FUZZTIME=$(FUZZTIME) scripts/fuzz-smoke

integration:
	scripts/integration

# Benchmarks are not part of `make test`; see README.md for what they measure.
bench:
	$(GO) test -run '^$$' -bench . -benchmem -count 6 ./inspect/ ./convert/ | tee bench.out
