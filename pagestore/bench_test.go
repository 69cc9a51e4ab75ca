package pagestore

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"testing"
	"time"
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

// BenchmarkOpen measures opening a store whose sealed packs index 1 and 10
// million pages (synthetic indexes over sparse pack files of the right size),
// and reports the bytes the in-memory index keeps per page after the open.
func BenchmarkOpen(b *testing.B) {
	for _, pages := range []int{1_000_000, 10_000_000} {
		b.Run(fmt.Sprintf("%dM", pages/1_000_000), func(b *testing.B) {
			dir := b.TempDir()
			s, err := Open(dir, Options{})
			if err != nil {
				b.Fatal(err)
			}
			s.Close()
			writeSyntheticPacks(b, dir, pages, 250_000)
			b.ReportAllocs()
			var heap uint64
			for b.Loop() {
				runtime.GC()
				var m0, m1 runtime.MemStats
				runtime.ReadMemStats(&m0)
				s, err := Open(dir, Options{})
				if err != nil {
					b.Fatal(err)
				}
				if len(s.index) != pages {
					b.Fatalf("index holds %d entries, want %d", len(s.index), pages)
				}
				b.StopTimer()
				runtime.GC()
				runtime.ReadMemStats(&m1)
				heap = m1.HeapAlloc - m0.HeapAlloc
				s.Close()
				b.StartTimer()
			}
			b.ReportMetric(float64(heap)/float64(pages), "index-B/page")

			// The naive baseline: only reading the index files, no parsing,
			// and their size on disk.
			b.StopTimer()
			t0 := time.Now()
			idx, err := filepath.Glob(filepath.Join(dir, packsDir, "*"+indexExt))
			if err != nil {
				b.Fatal(err)
			}
			var disk int
			for _, p := range idx {
				data, err := os.ReadFile(p)
				if err != nil {
					b.Fatal(err)
				}
				disk += len(data)
			}
			b.ReportMetric(float64(time.Since(t0).Nanoseconds()), "read-ns")
			b.ReportMetric(float64(disk)/float64(pages), "disk-B/page")
		})
	}
}

// writeSyntheticPacks writes sealed packs of perPack random ids each, pages in
// all: real indexes, and pack files that are holes of the recorded size.
func writeSyntheticPacks(b *testing.B, dir string, pages, perPack int) {
	r := rand.New(rand.NewPCG(uint64(pages), 3))
	for done := 0; done < pages; done += perPack {
		n := min(perPack, pages-done)
		entries := make([]indexEntry, n)
		const flen = 1000
		for i := range entries {
			e := &entries[i]
			binary.LittleEndian.PutUint64(e.ID[:], r.Uint64())
			binary.LittleEndian.PutUint64(e.ID[8:], r.Uint64())
			e.Off = packHeaderSize + uint64(i/maxFramePages)*flen
			e.FrameLen, e.Slot, e.Kind = flen, uint8(i%maxFramePages), kindPages
		}
		slices.SortFunc(entries, cmpEntry)
		size := packHeaderSize + uint64((n+maxFramePages-1)/maxFramePages)*flen
		name := newID()
		if err := os.WriteFile(filepath.Join(dir, packsDir, name+indexExt),
			encodeIndex(entries, size), fileMode); err != nil {
			b.Fatal(err)
		}
		if err := os.Truncate(filepath.Join(dir, packsDir, name+packExt),
			int64(size)); err != nil {
			f, cerr := os.Create(filepath.Join(dir, packsDir, name+packExt))
			if cerr != nil {
				b.Fatal(cerr)
			}
			f.Truncate(int64(size))
			f.Close()
		}
	}
}
