package pagestore

import (
	"testing"
	"unsafe"
)

// TestIndexEntryBudget keeps the in-memory index within 64 bytes per page.
func TestIndexEntryBudget(t *testing.T) {
	if n := unsafe.Sizeof(loc{}); n > 64 {
		t.Fatalf("in-memory index entry is %d bytes, budget 64", n)
	}
}
