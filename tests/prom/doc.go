// Package prom holds the end-to-end test of cryo's Prometheus metrics: it runs
// `cryo run --metrics` on a small program, has a real Prometheus server (the
// Debian package prometheus) scrape it, reads the metrics back through the
// Prometheus HTTP API, and lints the exposition with `promtool check metrics`.
//
// It needs root (cryo ptraces the program) and the prometheus and promtool
// binaries, which `make deps` installs. Without root it skips, or fails when
// CRYO_E2E_REQUIRE=1 as `make test` sets it; without the binaries it fails.
// CRYO_BIN names a prebuilt cryo to test instead of building ./cmd/cryo.
package prom
