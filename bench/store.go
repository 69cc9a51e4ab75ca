package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"time"

	"github.com/cryo-dev/cryo/pagestore"
)

const pageSize = pagestore.PageSize

// fillKinds are the page contents the store is measured on; mixed is
// memfill's mix (a quarter each zero, text, random, duplicates of 16 pages).
var fillKinds = []string{"zero", "text", "random", "mixed", "dup50"}

// fillPages returns n pages of kind; seed makes runs distinct so that nothing
// dedups against an earlier run.
func fillPages(kind string, n int, seed uint64) []byte {
	data := make([]byte, n*pageSize)
	r := rand.New(rand.NewPCG(seed, 7))
	templates := make([][]byte, 16)
	for i := range templates {
		templates[i] = make([]byte, pageSize)
		for j := 0; j < pageSize; j += 8 {
			v := r.Uint64()
			for k := range 8 {
				templates[i][j+k] = byte(v >> (8 * k))
			}
		}
	}
	for i := range n {
		p := data[i*pageSize : (i+1)*pageSize]
		class := kind
		switch kind {
		case "mixed":
			class = [...]string{"zero", "zero", "text", "text", "random", "random",
				"dup", "dup"}[i%8]
		case "dup50":
			class = [...]string{"random", "dup"}[i%2]
		}
		switch class {
		case "text":
			l := fmt.Sprintf("bench text page %d seed %d: the quick brown fox.\n", i, seed)
			for off := 0; off < pageSize; off += len(l) {
				copy(p[off:], l)
			}
		case "random":
			for j := 0; j < pageSize; j += 8 {
				v := r.Uint64()
				for k := range 8 {
					p[j+k] = byte(v >> (8 * k))
				}
			}
		case "dup":
			copy(p, templates[i%16])
		}
	}
	return data
}

// benchStore measures ingest (AddPages and Commit into a fresh store) per
// fill kind, against writing the same bytes uncompressed with fsync.
func benchStore(res *Results, dir string, sizeMiB int) error {
	n := sizeMiB << 20 / pageSize
	for ki, kind := range fillKinds {
		data := fillPages(kind, n, uint64(ki+1))
		sdir := filepath.Join(dir, "store-"+kind)
		os.RemoveAll(sdir)
		s, err := pagestore.Open(sdir, pagestore.Options{})
		if err != nil {
			return err
		}
		t0 := time.Now()
		w, err := s.NewWriter("")
		if err != nil {
			s.Close()
			return err
		}
		if err := w.AddPages(0x7f0000000000, data); err != nil {
			w.Abort()
			s.Close()
			return err
		}
		info, err := w.Commit(pagestore.Meta{})
		d := time.Since(t0)
		s.Close()
		os.RemoveAll(sdir)
		if err != nil {
			return err
		}

		naive, err := naiveWrite(filepath.Join(dir, "naive-"+kind), data)
		if err != nil {
			return err
		}
		gbps := float64(len(data)) / 1e9 / d.Seconds()
		ngbps := float64(len(data)) / 1e9 / naive.Seconds()
		add(res, "store", "ingest "+kind, "GB/s", gbps, ngbps)
		st := info.Stats
		add(res, "store", "stored bytes "+kind, "MiB", mib(st.StoredBytes), mib(int64(len(data))))
		nonzero := st.NewPages + st.DedupPages
		if st.NewPages > 0 && kind != "dup50" {
			// compression alone: bytes of the new pages over bytes stored.
			// The naive copy compresses nothing: its ratio is 1.
			addVs(res, "store", "compression ratio "+kind, "x",
				float64(st.NewPages*pageSize)/float64(st.StoredBytes), 1, "no compression")
		}
		if kind == "dup50" || kind == "mixed" {
			addVs(res, "store", "dedup ratio "+kind, "x",
				float64(nonzero)/float64(max(1, st.NewPages)), 1, "no deduplication")
		}
	}
	return nil
}

// naiveWrite writes data to path and fsyncs it.
func naiveWrite(path string, data []byte) (time.Duration, error) {
	t0 := time.Now()
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	defer os.Remove(path)
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		return 0, err
	}
	if err := f.Sync(); err != nil {
		return 0, err
	}
	return time.Since(t0), nil
}

var openRE = regexp.MustCompile(`BenchmarkOpen/(\d+)M\S*\s+\d+\s+(\d+) ns/op\s+` +
	`([\d.]+) disk-B/page\s+([\d.]+) index-B/page\s+([\d.]+) read-ns`)

// benchOpen runs pagestore's BenchmarkOpen (synthetic sealed indexes of 1 and
// 10 million pages over sparse packs) once per size with go test, and takes
// its open time and index bytes per page.
func benchOpen(res *Results, root string, millions []int) error {
	for _, m := range millions {
		cmd := exec.Command("go", "test", "-run", "^$", "-bench",
			fmt.Sprintf("^BenchmarkOpen$/^%dM$", m), "-benchtime", "1x", "./pagestore")
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("go test -bench BenchmarkOpen/%dM: %w: %s", m, err, out)
		}
		sm := openRE.FindSubmatch(out)
		if sm == nil {
			return fmt.Errorf("go test -bench BenchmarkOpen/%dM: no result in %s", m, out)
		}
		ns, _ := strconv.ParseFloat(string(sm[2]), 64)
		disk, _ := strconv.ParseFloat(string(sm[3]), 64)
		bpp, _ := strconv.ParseFloat(string(sm[4]), 64)
		readNs, _ := strconv.ParseFloat(string(sm[5]), 64)
		addVs(res, "store", fmt.Sprintf("open %dM pages", m), "ms", ns/1e6, readNs/1e6,
			"reading the index files")
		addVs(res, "store", fmt.Sprintf("index heap bytes/page %dM", m), "B", bpp, disk,
			"the index on disk")
	}
	return nil
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }
