package track

import (
	"bufio"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/cryo-dev/cryo/internal/pagemap"
)

// TestSoftDirtyPages runs the pure part of the soft-dirty tracker on pagemap
// entries recorded by hand as a soft-dirty kernel reports them (this kernel
// lacks CONFIG_MEM_SOFT_DIRTY, so they cannot be recorded here).
func TestSoftDirtyPages(t *testing.T) {
	ranges, armed, entries, want := readPagemapFixture(t, "testdata/softdirty-pagemap.txt")
	var read []Range
	d, err := softDirtyPages(ranges, armed, func(r Range) ([]pagemap.Entry, error) {
		read = append(read, r)
		return entries[r], nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var wantTracked []Range
	for _, r := range ranges {
		if armed[r] {
			wantTracked = append(wantTracked, r)
		}
	}
	if !slices.Equal(d.Tracked, wantTracked) || !slices.Equal(read, wantTracked) {
		t.Errorf("tracked %x (read %x), want %x", d.Tracked, read, wantTracked)
	}
	if !slices.Equal(d.Pages, want) {
		t.Errorf("pages %x, want %x", d.Pages, want)
	}

	// A short read is an error, not a range with its tail clean.
	_, err = softDirtyPages(ranges, armed, func(r Range) ([]pagemap.Entry, error) {
		return entries[r][:1], nil
	})
	if err == nil {
		t.Error("short pagemap read accepted")
	}
}

func readPagemapFixture(t *testing.T, name string) (ranges []Range, armed map[Range]bool,
	entries map[Range][]pagemap.Entry, want []uint64) {
	t.Helper()
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	armed = map[Range]bool{}
	entries = map[Range][]pagemap.Entry{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		if fields[0] == "range" {
			var r Range
			if len(fields) != 4 {
				t.Fatalf("%s:%d: bad range line", name, n)
			}
			r.Start, err = strconv.ParseUint(fields[1], 16, 64)
			if err == nil {
				r.End, err = strconv.ParseUint(fields[2], 16, 64)
			}
			if err != nil {
				t.Fatalf("%s:%d: %v", name, n, err)
			}
			ranges = append(ranges, r)
			armed[r] = fields[3] == "armed"
			continue
		}
		if len(ranges) == 0 {
			t.Fatalf("%s:%d: entry before the first range", name, n)
		}
		r := ranges[len(ranges)-1]
		e, err := strconv.ParseUint(fields[0], 16, 64)
		if err != nil {
			t.Fatalf("%s:%d: %v", name, n, err)
		}
		addr := r.Start + uint64(len(entries[r]))*pagemap.PageSize
		if addr >= r.End {
			t.Fatalf("%s:%d: more entries than pages in %x", name, n, r)
		}
		entries[r] = append(entries[r], pagemap.Entry(e))
		if len(fields) > 1 && fields[1] == "want" {
			want = append(want, addr)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	for _, r := range ranges {
		if got := uint64(len(entries[r])); got != (r.End-r.Start)/pagemap.PageSize {
			t.Fatal(fmt.Errorf("%s: range %x has %d entries", name, r, got))
		}
	}
	return ranges, armed, entries, want
}
