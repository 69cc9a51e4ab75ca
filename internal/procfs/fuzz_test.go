package procfs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// addSeeds adds every testdata file whose name starts with prefix.
func addSeeds(f *testing.F, prefix string) {
	names, err := filepath.Glob(filepath.Join("testdata", prefix+"*"))
	if err != nil || len(names) == 0 {
		f.Fatalf("no seeds %s: %v", prefix, err)
	}
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

func FuzzParseFdinfo(f *testing.F) {
	addSeeds(f, "fdinfo-")
	f.Fuzz(func(t *testing.T, b []byte) {
		fi, err := ParseFdinfo(b)
		if err == nil && fi == nil {
			t.Fatal("nil result without error")
		}
	})
}

func FuzzParseMaps(f *testing.F) {
	addSeeds(f, "maps-")
	f.Fuzz(func(t *testing.T, b []byte) {
		vmas, err := ParseMaps(b)
		if err != nil {
			return
		}
		for _, v := range vmas {
			if v.End < v.Start || len(v.Perms) != 4 {
				t.Fatalf("accepted %+v", v)
			}
			_ = v.Prot()
		}
	})
}

func FuzzParseSmaps(f *testing.F) {
	addSeeds(f, "smaps-")
	f.Fuzz(func(t *testing.T, b []byte) {
		vmas, err := ParseSmaps(b)
		if err != nil {
			return
		}
		for _, v := range vmas {
			for _, fl := range v.VmFlags {
				if fl == "" || strings.ContainsAny(fl, " \n") {
					t.Fatalf("flag %q", fl)
				}
			}
		}
	})
}

func FuzzParseStat(f *testing.F) {
	addSeeds(f, "stat-")
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := ParseStat(b)
		if err == nil && strings.Count(string(b), "(") == 0 {
			t.Fatalf("parsed %+v without a command name", st)
		}
	})
}

func FuzzParseAuxv(f *testing.F) {
	addSeeds(f, "auxv-")
	f.Fuzz(func(t *testing.T, b []byte) {
		av, err := ParseAuxv(b)
		if err == nil && (len(av)%2 != 0 || av[len(av)-2] != 0) {
			t.Fatalf("accepted %v", av)
		}
	})
}
