# peerd — build, test and demo. `make help` lists the targets.

GO           ?= go
PKG          := github.com/peerd/peerd
# The version comes from the newest v* tag, or 0.0.0-dev without one.
VERSION      ?= $(shell git describe --tags --match 'v[0-9]*' 2>/dev/null | sed 's/^v//' || true)
ifeq ($(strip $(VERSION)),)
VERSION      := 0.0.0-dev
endif
COMMIT       ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
# The wire-protocol range this source speaks. Tests build the same source
# with other ranges to play older and newer releases.
PROTOCOL_MIN ?= 1
PROTOCOL_MAX ?= 1
OUT          ?= bin/peerd
# HEALTH_FAULT builds a deliberately bad release whose health check fails
# (for tests of the rollout's health gate). Leave it empty.
HEALTH_FAULT ?=
# TAGS are Go build tags; the tests' builds add testhooks, which compiles in
# the reading of PEERD_TEST_HOOK_DIR (a pause at a rollout step). Release
# builds leave it empty: they read no PEERD_TEST_* variable.
TAGS         ?=
# urfave_cli_no_docs leaves out urfave/cli's Markdown and man generators
# (md2man, blackfriday: 0.26 MB); `peerd man` writes its page itself.
BUILD_TAGS   := urfave_cli_no_docs $(TAGS)
GOFLAGS_BUILD ?= -trimpath

LDFLAGS := -s -w \
	-X $(PKG)/buildinfo.Version=$(VERSION) \
	-X $(PKG)/buildinfo.Commit=$(COMMIT) \
	-X $(PKG)/buildinfo.ProtocolMin=$(PROTOCOL_MIN) \
	-X $(PKG)/buildinfo.ProtocolMax=$(PROTOCOL_MAX) \
	-X '$(PKG)/buildinfo.HealthFault=$(HEALTH_FAULT)'

# Packages: one deb and one rpm per architecture, into DIST.
ARCHS        ?= amd64 arm64
DIST         ?= dist
GEN          := build/gen
NFPM         := $(GO) tool nfpm
# Newer goreleaser releases need modules the proxy refuses, or a newer Go.
GORELEASER_VERSION ?= v2.12.5

.PHONY: help build test test-faults test-sim unit lint fmt fuzz demo demo-app bench bench-sim clean gen packages goreleaser-check test-systemd

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' \
	  '{ name[NR] = $$1; text[NR] = $$2; if (length($$1) > w) w = length($$1) } \
	  END { for (i = 1; i <= NR; i++) printf "  %-" w "s  %s\n", name[i], text[i] }'

build: ## build OUT (bin/peerd) at VERSION with PROTOCOL_MIN..PROTOCOL_MAX
	@case "$(PROTOCOL_MIN)$(PROTOCOL_MAX)" in *[!0-9]*|"") echo "PROTOCOL_MIN and PROTOCOL_MAX must be whole numbers" >&2; exit 2;; esac
	@test $(PROTOCOL_MIN) -ge 1 -a $(PROTOCOL_MAX) -ge $(PROTOCOL_MIN) || { echo "want 1 <= PROTOCOL_MIN <= PROTOCOL_MAX" >&2; exit 2; }
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -tags "$(BUILD_TAGS)" -ldflags "$(LDFLAGS)" -o $(OUT) ./cmd/peerd

test: lint ## vet, staticcheck, every test (integration included) under the race detector, then 200 seeded fault schedules
	$(GO) test -race -count=1 -timeout 30m ./...
	@# Under -race the fault schedules run 20 seeds and the harness no
	@# 500-node rollout; without it, 200 seeds and the 500 nodes.
	$(GO) test -count=1 -timeout 20m -run '^(TestFaultSchedules|TestRolloutInTheHarness|TestSwarmOriginEgress)$$' ./upgrade/upgradetest/

test-faults: ## real faults, as root: agents in network namespaces under partitions, SIGSTOP, kill -9, concurrent triggers, late joiners (~4 min)
	PEERD_TEST_FAULTS=1 $(GO) test -count=1 -v -timeout 15m -run '^TestFaults' ./integration/

# SEEDS is how many fault schedules test-sim runs.
SEEDS        ?= 1000

test-sim: ## SEEDS (1000) seeded fault schedules over 50-200 nodes in the fleet harness; replay one with -sim.seed=N
	$(GO) test -count=1 -timeout 0 -run '^TestFaultSchedules$$' ./upgrade/upgradetest/ -args -sim.seeds=$(SEEDS) -sim.big

unit: ## the fast tests only (no integration)
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v /integration)

# FUZZTIME is how long make fuzz runs each fuzz target.
FUZZTIME     ?= 60s

fuzz: ## run every fuzz target for FUZZTIME (60s) each; a crasher lands in the package's testdata/fuzz
	@FUZZTIME=$(FUZZTIME) GO=$(GO) bash .ci/fuzz

lint: ## gofmt check, go vet, staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt would change: $$out (run 'make fmt')" >&2; exit 1; fi
	$(GO) vet ./...
	$(GO) tool staticcheck ./...

fmt: ## format the code
	gofmt -w $$(git ls-files '*.go')

demo: ## 5 local agents on loopback upgraded 1.0.0 -> 2.0.0 in waves (~20 s)
	@bash contrib/demo/demo.sh

demo-app: ## 5 local agents install the example kv store, then upgrade it under writes (~30 s)
	@bash contrib/demo/demo-app.sh

# BENCH_N are the fleet sizes of make bench, BENCH_RUNS the runs of each
# tool at each size, BENCH_TOOLS a subset of peerd,ansible,naive, BENCH_KV_N
# the kv fleet and BENCH_IDLE the idle window (0 leaves either out),
# BENCH_OBSERVE how often the observer dials every node. A quick run:
# make bench BENCH_N=10 BENCH_RUNS=1 BENCH_KV_N=5 BENCH_IDLE=5s
BENCH_N      ?= 20,100
BENCH_RUNS   ?= 2
BENCH_TOOLS  ?= peerd,ansible,naive
BENCH_KV_N   ?= 20
BENCH_IDLE   ?= 30s
BENCH_OBSERVE ?= 20ms

bench: ## peerd vs Ansible serial: vs a naive script (BENCH_TOOLS), side by side A B C A B C, on BENCH_N (20,100) agents x BENCH_RUNS (2); then kv under load (BENCH_KV_N) and an idle agent beside serf (BENCH_IDLE); ~20 min
	@command -v ansible-playbook >/dev/null || echo "bench: no ansible-playbook (apt-get install ansible): its column is skipped" >&2
	BENCH_N=$(BENCH_N) BENCH_RUNS=$(BENCH_RUNS) BENCH_TOOLS=$(BENCH_TOOLS) BENCH_KV_N=$(BENCH_KV_N) BENCH_IDLE=$(BENCH_IDLE) BENCH_OBSERVE=$(BENCH_OBSERVE) \
	  $(GO) test -count=1 -run '^$$' -bench '^BenchmarkSideBySide$$' -benchtime 1x -timeout 120m ./integration/

# SIM_NODES is the fleet size of bench-sim.
SIM_NODES    ?= 1000

bench-sim: ## roll SIM_NODES (1000) engines in one process over the in-memory hub, batch 10 %, dwell 1 s of fake time
	@out=$$($(GO) test -count=1 -run '^TestSimBench$$' -v -timeout 20m ./upgrade/upgradetest/ -args -sim.nodes=$(SIM_NODES) 2>&1); rc=$$?; \
	  if [ $$rc -eq 0 ]; then echo "$$out" | grep '^sim:'; else echo "$$out"; fi; exit $$rc

gen: ## completion scripts, man page and changelog for the packages, in build/gen
	@rm -rf $(GEN) && mkdir -p $(GEN)
	$(MAKE) --no-print-directory build OUT=$(GEN)/peerd-host
	$(GEN)/peerd-host completion bash > $(GEN)/peerd.bash
	$(GEN)/peerd-host completion zsh > $(GEN)/_peerd
	$(GEN)/peerd-host man | gzip -9n > $(GEN)/peerd.1.gz
	printf 'peerd (%s) unstable; urgency=medium\n\n  * Release %s; see https://github.com/peerd/peerd/releases\n\n -- peerd maintainers <maintainers@peerd.invalid>  %s\n' \
	  "$(VERSION)" "$(VERSION)" "$$(date -R -d @$$(git log -1 --format=%ct 2>/dev/null || date +%s))" | gzip -9n > $(GEN)/changelog.gz

packages: gen ## deb and rpm of VERSION for each of ARCHS (amd64 arm64) into DIST (dist/), with nfpm
	@mkdir -p $(DIST)
	@set -e; for arch in $(ARCHS); do \
	  GOARCH=$$arch $(MAKE) --no-print-directory build OUT=$(GEN)/peerd; \
	  for fmt in deb rpm; do \
	    VERSION=$(VERSION) ARCH=$$arch $(NFPM) package --config packaging/nfpm.yaml --packager $$fmt --target $(DIST)/; \
	  done; \
	done
	@ls -l $(DIST)

goreleaser-check: ## validate goreleaser.yaml with goreleaser itself (GORELEASER_VERSION, from the Go module proxy)
	$(GO) run github.com/goreleaser/goreleaser/v2@$(GORELEASER_VERSION) check --config goreleaser.yaml

test-systemd: ## opt-in: boot a Debian root with systemd-nspawn, run peerd.service and a self-upgrade under systemd (root)
	PEERD_TEST_SYSTEMD=1 $(GO) test -count=1 -v -timeout 30m -run 'TestSystemd' ./packaging/

clean:
	rm -rf bin build dist
