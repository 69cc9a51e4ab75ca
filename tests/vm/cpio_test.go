package main

import (
	"bytes"
	"strconv"
	"testing"
)

// TestInitramfs writes an archive and reads it back as the kernel does: newc
// headers, names and data each padded to four bytes, parents before children,
// and the trailer last.
func TestInitramfs(t *testing.T) {
	rd := newInitramfs()
	rd.addData("/a/b/file", []byte("hello"), 0o644)
	rd.addData("/init", []byte("#!"), 0o755)
	var buf bytes.Buffer
	if err := rd.write(&buf); err != nil {
		t.Fatal(err)
	}
	type entry struct {
		name string
		mode uint64
		data string
	}
	var got []entry
	b := buf.Bytes()
	for off := 0; ; {
		if string(b[off:off+6]) != "070701" {
			t.Fatalf("at %d: magic %q", off, b[off:off+6])
		}
		field := func(i int) uint64 {
			v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
		mode, size, namesize := field(1), int(field(6)), int(field(11))
		name := string(b[off+110 : off+110+namesize-1])
		off = (off + 110 + namesize + 3) &^ 3
		data := string(b[off : off+size])
		off = (off + size + 3) &^ 3
		if name == "TRAILER!!!" {
			if off != len(b) {
				t.Errorf("%d bytes after the trailer", len(b)-off)
			}
			break
		}
		got = append(got, entry{name, mode, data})
	}
	want := []entry{{"a", 0o040755, ""}, {"a/b", 0o040755, ""},
		{"a/b/file", 0o100644, "hello"}, {"init", 0o100755, "#!"}}
	if len(got) != len(want) {
		t.Fatalf("entries %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("entry %d: %+v, want %+v", i, got[i], want[i])
		}
	}
}
