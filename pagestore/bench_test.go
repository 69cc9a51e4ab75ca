package pagestore

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// BenchmarkIngest measures AddPages plus Commit (hash, dedup, compress, write,
// fsync, seal, manifest) of pages that are all new to the store. Each iteration
// stamps the pages with its number first, outside the timing, so nothing dedups.
func BenchmarkIngest(b *testing.B) {
	kinds := []struct {
		name string
		page func(r *rand.Rand) []byte
	}{
		{"random", randomPage},
		{"text", textPage},
	}
	for _, k := range kinds {
		for _, size := range []int{1 << 20, 16 << 20, 64 << 20} {
			b.Run(fmt.Sprintf("%s/%dMiB", k.name, size>>20), func(b *testing.B) {
				r := rand.New(rand.NewPCG(1, 2))
				data := make([]byte, 0, size)
				for len(data) < size {
					data = append(data, k.page(r)...)
				}
				s, err := Open(b.TempDir(), Options{})
				if err != nil {
					b.Fatal(err)
				}
				defer s.Close()
				b.SetBytes(int64(size))
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					b.StopTimer()
					for p := 0; p < size; p += PageSize {
						data[p] = byte(i)
						data[p+1] = byte(i >> 8)
						data[p+2] = byte(i >> 16)
					}
					b.StartTimer()
					w, err := s.NewWriter("")
					if err != nil {
						b.Fatal(err)
					}
					if err := w.AddPages(0x7f0000000000, data); err != nil {
						b.Fatal(err)
					}
					if _, err := w.Commit(Meta{}); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
