package pagestore

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// The fuzz targets feed arbitrary bytes to each decoder of on-disk data. A decoder
// may reject its input but must not panic or allocate beyond what the input can
// justify; what it accepts must encode back to the same bytes.

func FuzzManifest(f *testing.F) {
	f.Add(encodeManifest(&manifest{ID: "01k8ue86nhhiol", Parent: "p", Created: 1,
		Labels: map[string]string{"pid": "42"}, Image: []byte("{}"),
		Windows: []windowRef{{Base: 0x400000}, {Base: 0x7f0000000000}}}))
	f.Add([]byte(manifestMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeManifest(b)
		if err != nil {
			return
		}
		if !bytes.Equal(encodeManifest(m), b) {
			t.Fatal("manifest does not re-encode to its input")
		}
	})
}

func FuzzBlock(f *testing.F) {
	b := &block{IDs: []PageID{{1}, {2}}}
	b.Present[0] = 0b111
	b.Zero[0] = 0b010
	f.Add(encodeBlock(b))
	f.Add(encodeBlock(&block{}))
	f.Fuzz(func(t *testing.T, p []byte) {
		b, err := decodeBlock(p)
		if err != nil {
			return
		}
		if !bytes.Equal(encodeBlock(b), p) {
			t.Fatal("block does not re-encode to its input")
		}
	})
}

func FuzzDelta(f *testing.F) {
	d := &delta{Base: PageID{3}, IDs: []PageID{{1}}}
	d.Changed[0], d.Present[0], d.Zero[0] = 0b1110, 0b0110, 0b0100
	f.Add(encodeDelta(d))
	f.Add(encodeDelta(&delta{}))
	f.Fuzz(func(t *testing.T, p []byte) {
		d, err := decodeDelta(p)
		if err != nil {
			return
		}
		if !bytes.Equal(encodeDelta(d), p) {
			t.Fatal("delta block does not re-encode to its input")
		}
	})
}

func FuzzFrameHeader(f *testing.F) {
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		f.Fatal(err)
	}
	defer enc.Close()
	text := bytes.Repeat([]byte("frame "), PageSize/6+1)[:PageSize]
	f.Add(buildFrame(enc, nil, kindPages, []PageID{HashPage(text)}, text))
	f.Add(buildFrame(enc, nil, kindBlock, []PageID{{9}}, encodeBlock(&block{})))
	dec, err := zstd.NewReader(nil, zstd.WithDecoderMaxMemory(1<<20))
	if err != nil {
		f.Fatal(err)
	}
	defer dec.Close()
	s := &Store{dec: dec}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := decodeFrameHeader(b)
		if err != nil {
			return
		}
		if got := appendFrameHeader(nil, h); !bytes.Equal(got, b[:frameHeaderSize]) {
			t.Fatal("frame header does not re-encode to its input")
		}
		if int64(len(b)) == h.size() {
			s.decodeFrame(b) // must not panic
		}
	})
}

func FuzzIndex(f *testing.F) {
	f.Add(encodeIndex([]indexEntry{
		{ID: PageID{1}, Off: 16, FrameLen: 100, Slot: 0, Kind: kindPages},
		{ID: PageID{2}, Off: 16, FrameLen: 100, Slot: 1, Kind: kindPages},
	}, 116))
	f.Add(encodeIndex(nil, 16))
	f.Fuzz(func(t *testing.T, b []byte) {
		locs, size, err := decodeIndex(b, 0)
		if err != nil {
			return
		}
		entries := make([]indexEntry, len(locs))
		for i, l := range locs {
			entries[i] = indexEntry{ID: l.id, Off: l.off, FrameLen: l.flen, Slot: l.slot,
				Kind: l.kind}
		}
		if !bytes.Equal(encodeIndex(entries, size), b) {
			t.Fatal("index does not re-encode to its input")
		}
	})
}

// TestWriteFuzzSeeds regenerates the committed seed corpus under testdata/fuzz
// from a real store when CRYO_WRITE_FUZZ_SEEDS=1.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("CRYO_WRITE_FUZZ_SEEDS") != "1" {
		t.Skip("not a test but the seed-corpus generator: set CRYO_WRITE_FUZZ_SEEDS=1 to run it")
	}
	dir := t.TempDir()
	s := openTest(t, dir)
	ranges, _, _ := sampleRanges(11)
	info := commit(t, s, "", ranges)
	man, _ := os.ReadFile(filepath.Join(dir, snapsDir, info.ID))
	ents, _ := os.ReadDir(filepath.Join(dir, packsDir))
	var pack, idx []byte
	for _, e := range ents {
		b, _ := os.ReadFile(filepath.Join(dir, packsDir, e.Name()))
		if filepath.Ext(e.Name()) == indexExt {
			idx = b
		} else {
			pack = b
		}
	}
	sn, err := s.OpenSnapshot(info.ID)
	if err != nil {
		t.Fatal(err)
	}
	blk := encodeBlock(sn.blocks[0])
	sn.Close()
	first := pack[packHeaderSize:]
	h, err := decodeFrameHeader(first)
	if err != nil {
		t.Fatal(err)
	}
	seeds := map[string][]byte{
		"FuzzManifest/real":    man,
		"FuzzIndex/real":       idx,
		"FuzzBlock/real":       blk,
		"FuzzFrameHeader/real": first[:h.size()],
	}
	for name, b := range seeds {
		p := filepath.Join("testdata", "fuzz", name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		content := "go test fuzz v1\n[]byte(" + quoteBytes(b) + ")\n"
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func quoteBytes(b []byte) string {
	var out bytes.Buffer
	out.WriteByte('"')
	for _, c := range b {
		if c >= 0x20 && c < 0x7f && c != '"' && c != '\\' {
			out.WriteByte(c)
		} else {
			out.WriteString(`\x`)
			out.WriteByte("0123456789abcdef"[c>>4])
			out.WriteByte("0123456789abcdef"[c&15])
		}
	}
	out.WriteByte('"')
	return out.String()
}
