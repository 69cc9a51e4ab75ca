# cryo: build, test, demo and benchmark targets.
#
#   make demo    build cryo and run it on a python3 program (tests/demo.sh)
#   make test    install gcc, python3, a JDK, prometheus, chromium, redis and memcached if
#                missing; go vet; go test; the quick bench (it must complete)
#   make bench   the full benchmark suite (docs/BENCH.md)
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

.PHONY: all build deps demo-deps test e2e test-vm bench demo clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/cryo

# deps installs what the tests build and run, only when it is missing.
deps:
	@missing=""; \
	command -v gcc >/dev/null 2>&1 || missing="$$missing gcc libc6-dev"; \
	command -v python3 >/dev/null 2>&1 || missing="$$missing python3"; \
	command -v javac >/dev/null 2>&1 || missing="$$missing default-jdk-headless"; \
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
# redis-server, redis-benchmark and memcached, for the servers' end-to-end tests.
# Under systemd the packages start their own services on the default ports; the
# tests run servers of their own on free loopback ports and do not use them.
	@if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-benchmark >/dev/null 2>&1 || \
	    ! command -v memcached >/dev/null 2>&1; then \
		echo "installing: redis-server redis-tools memcached"; \
		apt-get update && apt-get install -y redis-server redis-tools memcached; \
	fi
# chromium, for the bench report test that renders the HTML report headless.
	@if ! command -v chromium >/dev/null 2>&1; then \
		echo "installing: chromium"; \
		apt-get update && apt-get install -y chromium; \
	fi

test: deps
	$(GO) vet ./...
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...
# The quick bench, so that the suite cannot rot: it fails when a section fails
# or a figure is missing; its times are not judged here.
	out=$$(mktemp -d) && $(GO) run ./bench -quick -out "$$out" && rm -rf "$$out"

e2e: deps
	$(GO) test -v -count=1 -timeout $(TEST_TIMEOUT) ./tests/e2e/

# test-vm boots Debian's own kernel (linux-image-amd64, fetched into /var/cache/cryo-vm
# and never installed) under qemu with an initramfs of static test binaries, runs the
# tracker and checkpoint/restore tests in it and fails on any failure. It installs
# qemu-system-x86 when missing. VM_FLAGS: e.g. -accel tcg, -timeout 9m, -cache DIR.
test-vm:
	$(GO) run ./tests/vm $(VM_FLAGS)

# bench runs the benchmark suite (docs/BENCH.md): a table on stdout,
# bench-out/bench.json and bench-out/bench.html. BENCH_FLAGS=-quick for a short run.
bench: deps
	$(GO) run ./bench $(BENCH_FLAGS) -out bench-out

# The demo needs only python3 (Debian has it; a minimal image may not): it does
# not wait for what the tests install.
demo-deps:
	@command -v python3 >/dev/null 2>&1 || { echo "installing: python3"; \
		apt-get update && apt-get install -y python3; }

demo: demo-deps build
	tests/demo.sh $(BIN)


clean:
	rm -rf bin
	$(GO) clean -testcache
