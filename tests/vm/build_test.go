package main

import (
	"slices"
	"testing"
)

// TestPrebuilt: the programs the VM prebuilds include the tests' own programs
// and the C and Go workloads of the end-to-end tests, each under its own name.
func TestPrebuilt(t *testing.T) {
	t.Chdir("../..") // the builder runs from the repository root
	srcs, err := prebuilt()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, src := range srcs {
		names = append(names, prebuiltName(src))
	}
	for _, want := range []string{"toucher", "writer", "mapper", "carryon", "sockserve",
		"threadwait", "statecheck", "stateholdout", "goroutines"} {
		if !slices.Contains(names, want) {
			t.Errorf("prebuilt programs %v lack %s", names, want)
		}
	}
	const goPkg = "./tests/e2e/testdata/goroutines"
	if i := slices.Index(names, "goroutines"); i >= 0 && srcs[i] != goPkg {
		t.Errorf("goroutines is built from %s, want the package %s", srcs[i], goPkg)
	}
}
