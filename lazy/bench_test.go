package lazy

import (
	"fmt"
	"testing"
)

// copySource serves every page of its ranges from one prepared page, so
// that benchmarks measure the server and the kernel, not page generation.
type copySource struct {
	*fakeSource
	page  [pageSize]byte
	dense []uint64 // if set, every page has data
}

func (c *copySource) Pages() []uint64 {
	if c.dense != nil {
		return c.dense
	}
	return c.fakeSource.Pages()
}

func (c *copySource) ReadPage(addr uint64, dst []byte) error {
	copy(dst, c.page[:])
	return nil
}

// BenchmarkPrefetch measures background filling of a region nobody touches:
// UFFDIO_COPY in prefetch batches plus the serve loop around them.
func BenchmarkPrefetch(b *testing.B) {
	for _, tc := range []struct {
		mib   int
		dense bool
	}{{16, false}, {64, false}, {64, true}} {
		mib := tc.mib
		name := fmt.Sprintf("%dMiB", mib)
		if tc.dense {
			name += "-dense" // every page has data: runs of 32 pages per copy
		} else {
			name += "-sparse" // every fifth page zero: runs of 4 pages per copy
		}
		b.Run(name, func(b *testing.B) {
			pages := mib << 20 / pageSize
			b.SetBytes(int64(pages * pageSize))
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				r := serveRegionFrom(b, pages, Options{Prefetch: true}, -1,
					func(f *fakeSource) Source {
						c := &copySource{fakeSource: f}
						if tc.dense && len(f.pages) > 0 {
							// The region starts at most one page before
							// its first data page; extra pages are ignored.
							base := f.pages[0] - pageSize
							for a := base; len(c.dense) <= pages; a += pageSize {
								c.dense = append(c.dense, a)
							}
						}
						return c
					})
				b.StartTimer()
				r.wait(b)
			}
		})
	}
}
