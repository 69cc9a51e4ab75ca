# cryo: build, test, demo and benchmark targets.
#
#   make demo    build cryo and run it on a python3 program (tests/demo.sh)
#   make test    install gcc, python3, prometheus and chromium if missing; go vet; go test
#   make e2e     only the end-to-end tests, verbose (timings in the log)
#   make test-vm the dirty-tracker and checkpoint/restore tests inside a VM booting
#                Debian's kernel, which has soft-dirty tracking (tests/vm)
#
# The end-to-end tests and the demo need root and a kernel with userfaultfd.

GO ?= go
BIN := bin/cryo
TEST_TIMEOUT ?= 20m

# Fail the end-to-end tests, instead of skipping them, when this machine
# cannot run them (not root, no userfaultfd). Set to 0 to allow skipping.
CRYO_E2E_REQUIRE ?= 1
export CRYO_E2E_REQUIRE

.PHONY: all build deps test e2e test-vm bench demo clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/cryo

# deps installs what the tests build and run, only when it is missing.
deps:
	@missing=""; \
	command -v gcc >/dev/null 2>&1 || missing="$$missing gcc libc6-dev"; \
	command -v python3 >/dev/null 2>&1 || missing="$$missing python3"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update && apt-get install -y $$missing; \
	fi
# prometheus and promtool, for tests/prom, without the exporters the package
# recommends. Under systemd the package also starts its own service on :9090; the
# test runs a server of its own on free loopback ports and does not use it.
	@if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then \
		echo "installing: prometheus"; \
		apt-get update && apt-get install -y --no-install-recommends prometheus; \
	fi
# chromium, for the bench report test that renders the HTML report headless.
	@if ! command -v chromium >/dev/null 2>&1; then \
		echo "installing: chromium"; \
		apt-get update && apt-get install -y chromium; \
	fi

test: deps
	$(GO) vet ./...
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...

e2e: deps
	$(GO) test -v -count=1 -timeout $(TEST_TIMEOUT) ./tests/e2e/

# test-vm boots Debian's own kernel (linux-image-amd64, fetched into /var/cache/cryo-vm
# and never installed) under qemu with an initramfs of static test binaries, runs the
# tracker and checkpoint/restore tests in it and fails on any failure. It installs
# qemu-system-x86 when missing. VM_FLAGS: e.g. -accel tcg, -timeout 9m, -cache DIR.
test-vm:
	$(GO) run ./tests/vm $(VM_FLAGS)

# bench runs the benchmark suite (work in progress, issue 5): a table on stdout,
# bench-out/bench.json and bench-out/bench.html. BENCH_FLAGS=-quick for a short run.
bench: deps
	$(GO) run ./bench $(BENCH_FLAGS) -out bench-out

demo: deps build
	tests/demo.sh $(BIN)


clean:
	rm -rf bin
	$(GO) clean -testcache
