package pagestore

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"math/bits"
	"slices"

	"github.com/cespare/xxhash/v2"
	"github.com/zeebo/xxh3"
)

// This file holds every encoder and decoder of on-disk structures. All integers are
// little-endian; PageIDs are the 16 bytes of xxh3.Uint128.Bytes (big-endian: Hi,
// then Lo). Decoders trust nothing: every length, count and offset is checked
// against the bytes at hand before anything is allocated or sliced. The layouts
// are specified in docs/FORMAT.md; keep the two in step.

// PageSize is the size of a page, in bytes.
const PageSize = 4096

// PageID names a page (or a page-map block) by the xxh3 128-bit hash of its
// content, big-endian.
type PageID [16]byte

// String returns the id in lowercase hex.
func (id PageID) String() string { return hex.EncodeToString(id[:]) }

// HashPage returns the id of data (a page, or an encoded page-map block).
func HashPage(data []byte) PageID { return PageID(xxh3.Hash128(data).Bytes()) }

const (
	formatVersion = 1 // version of the store as a whole, in the VERSION file

	// Frames.
	maxFramePages   = 16
	frameHeaderSize = 24
	frameMagic      = "CRF1"
	kindPages       = 1 // frame holds pages
	kindBlock       = 2 // frame holds one page-map block
	codecRaw        = 0 // stored as is (compression did not help)
	codecZstd       = 1

	// Packs.
	packMagic      = "CRYOPACK"
	packVersion    = 1
	packHeaderSize = 16

	// Pack indexes.
	indexMagic      = "CRYOPIDX"
	indexVersion    = 1
	indexHeaderSize = 24
	indexEntrySize  = 32

	// Page-map blocks.
	windowSlots     = 512
	windowSize      = windowSlots * PageSize // 2 MiB
	blockMagic      = "CPM1"
	blockHeaderSize = 8 + 2*windowSlots/8
	maxBlockSize    = blockHeaderSize + windowSlots*16

	// Manifests.
	manifestMagic   = "CRYOSNAP"
	manifestVersion = 1
	maxManifestSize = 1 << 30
	maxIDLen        = 255
)

// frameHeader is the fixed part of a frame, followed on disk by Count PageIDs and
// then CompLen bytes of payload.
type frameHeader struct {
	Kind    uint8
	Codec   uint8
	Count   uint8
	RawLen  uint32
	CompLen uint32
	Sum     uint64 // xxhash64 of the CompLen payload bytes
}

// size returns the full size of the frame on disk.
func (h frameHeader) size() int64 {
	return frameHeaderSize + int64(h.Count)*16 + int64(h.CompLen)
}

func appendFrameHeader(b []byte, h frameHeader) []byte {
	b = append(b, frameMagic...)
	b = append(b, h.Kind, h.Codec, h.Count, 0)
	b = binary.LittleEndian.AppendUint32(b, h.RawLen)
	b = binary.LittleEndian.AppendUint32(b, h.CompLen)
	return binary.LittleEndian.AppendUint64(b, h.Sum)
}

// decodeFrameHeader decodes the fixed frame header at the start of b and checks
// that its fields are consistent with each other. It does not check the payload.
func decodeFrameHeader(b []byte) (frameHeader, error) {
	var h frameHeader
	if len(b) < frameHeaderSize {
		return h, formatErr("frame header: %d bytes, need %d", len(b), frameHeaderSize)
	}
	if string(b[:4]) != frameMagic {
		return h, formatErr("frame header: bad magic %q", b[:4])
	}
	h.Kind, h.Codec, h.Count = b[4], b[5], b[6]
	if b[7] != 0 {
		return h, formatErr("frame header: reserved byte %#x", b[7])
	}
	h.RawLen = binary.LittleEndian.Uint32(b[8:])
	h.CompLen = binary.LittleEndian.Uint32(b[12:])
	h.Sum = binary.LittleEndian.Uint64(b[16:])
	switch h.Kind {
	case kindPages:
		if h.Count < 1 || h.Count > maxFramePages {
			return h, formatErr("frame header: %d pages", h.Count)
		}
		if h.RawLen != uint32(h.Count)*PageSize {
			return h, formatErr("frame header: %d raw bytes for %d pages", h.RawLen, h.Count)
		}
	case kindBlock:
		if h.Count != 1 || h.RawLen < blockHeaderSize || h.RawLen > maxBlockSize {
			return h, formatErr("frame header: block of %d bytes, count %d", h.RawLen, h.Count)
		}
	default:
		return h, formatErr("frame header: unknown kind %d", h.Kind)
	}
	switch h.Codec {
	case codecRaw:
		if h.CompLen != h.RawLen {
			return h, formatErr("frame header: raw frame stores %d of %d bytes", h.CompLen,
				h.RawLen)
		}
	case codecZstd:
		if h.CompLen == 0 || h.CompLen >= h.RawLen {
			return h, formatErr("frame header: %d compressed bytes for %d", h.CompLen, h.RawLen)
		}
	default:
		return h, formatErr("frame header: unknown codec %d", h.Codec)
	}
	return h, nil
}

// frameIDs returns the ids that follow the header in frame (header included).
func frameIDs(frame []byte, h frameHeader) []PageID {
	ids := make([]PageID, h.Count)
	for i := range ids {
		copy(ids[i][:], frame[frameHeaderSize+16*i:])
	}
	return ids
}

// checkFrameSum verifies the payload checksum of a whole frame (header included).
func checkFrameSum(frame []byte, h frameHeader) ([]byte, error) {
	if int64(len(frame)) != h.size() {
		return nil, formatErr("frame: %d bytes, header says %d", len(frame), h.size())
	}
	payload := frame[frameHeaderSize+16*int(h.Count):]
	if got := xxhash.Sum64(payload); got != h.Sum {
		return nil, formatErr("frame checksum %016x, header says %016x", got, h.Sum)
	}
	return payload, nil
}

func appendPackHeader(b []byte) []byte {
	b = append(b, packMagic...)
	b = binary.LittleEndian.AppendUint32(b, packVersion)
	return binary.LittleEndian.AppendUint32(b, 0)
}

func decodePackHeader(b []byte) error {
	if len(b) < packHeaderSize || string(b[:8]) != packMagic {
		return formatErr("pack header: bad magic")
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != packVersion {
		return formatErr("pack header: version %d, want %d", v, packVersion)
	}
	return nil
}

// indexEntry locates one page (or block) in a pack.
type indexEntry struct {
	ID       PageID
	Off      uint64 // offset of the frame in the pack
	FrameLen uint32 // full size of the frame on disk
	Slot     uint8  // position of the page in the frame
	Kind     uint8  // kindPages or kindBlock
}

func cmpEntry(a, b indexEntry) int { return bytes.Compare(a.ID[:], b.ID[:]) }

// encodeIndex encodes the index of a pack of packSize bytes. Entries must be
// sorted by id.
func encodeIndex(entries []indexEntry, packSize uint64) []byte {
	b := make([]byte, 0, indexHeaderSize+indexEntrySize*len(entries)+8)
	b = append(b, indexMagic...)
	b = binary.LittleEndian.AppendUint32(b, indexVersion)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(entries)))
	b = binary.LittleEndian.AppendUint64(b, packSize)
	for _, e := range entries {
		b = append(b, e.ID[:]...)
		b = binary.LittleEndian.AppendUint64(b, e.Off)
		b = binary.LittleEndian.AppendUint32(b, e.FrameLen)
		b = append(b, e.Slot, e.Kind, 0, 0)
	}
	return binary.LittleEndian.AppendUint64(b, xxhash.Sum64(b))
}

// decodeIndex decodes the index of pack number pack straight into in-memory
// entries (sorted by id, as on disk) and returns them with the size of the pack
// it describes.
func decodeIndex(b []byte, pack uint32) ([]loc, uint64, error) {
	if len(b) < indexHeaderSize+8 {
		return nil, 0, formatErr("index: %d bytes is too short", len(b))
	}
	if string(b[:8]) != indexMagic {
		return nil, 0, formatErr("index: bad magic")
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != indexVersion {
		return nil, 0, formatErr("index: version %d, want %d", v, indexVersion)
	}
	n := uint64(binary.LittleEndian.Uint32(b[12:]))
	packSize := binary.LittleEndian.Uint64(b[16:])
	if want := indexHeaderSize + indexEntrySize*n + 8; uint64(len(b)) != want {
		return nil, 0, formatErr("index: %d bytes for %d entries, want %d", len(b), n, want)
	}
	body := len(b) - 8
	if got, want := xxhash.Sum64(b[:body]), binary.LittleEndian.Uint64(b[body:]); got != want {
		return nil, 0, formatErr("index: checksum %016x, stored %016x", got, want)
	}
	entries := make([]loc, n)
	p := b[indexHeaderSize:body]
	for i := range entries {
		e := &entries[i]
		copy(e.id[:], p)
		e.off = binary.LittleEndian.Uint64(p[16:])
		e.flen = binary.LittleEndian.Uint32(p[24:])
		e.slot, e.kind, e.pack = p[28], p[29], pack
		p = p[indexEntrySize:]
		if e.kind != kindPages && e.kind != kindBlock {
			return nil, 0, formatErr("index entry %d: kind %d", i, e.kind)
		}
		if e.slot >= maxFramePages || e.flen < frameHeaderSize {
			return nil, 0, formatErr("index entry %d: slot %d, frame %d bytes", i, e.slot,
				e.flen)
		}
		if e.off < packHeaderSize || e.off > packSize || packSize-e.off < uint64(e.flen) {
			return nil, 0, formatErr("index entry %d: frame %d+%d outside pack of %d bytes", i,
				e.off, e.flen, packSize)
		}
		if i > 0 && idLess(&e.id, &entries[i-1].id) {
			return nil, 0, formatErr("index entry %d: not sorted", i)
		}
	}
	return entries, packSize, nil
}

// block is the decoded page map of one 2 MiB window.
type block struct {
	Present [windowSlots / 64]uint64
	Zero    [windowSlots / 64]uint64
	IDs     []PageID // one per slot present and not zero, in slot order

	// For a block read from a delta block (see delta.go): the id of the full
	// block it is based on, and that block decoded. Both zero for a full block.
	baseID PageID
	base   *block
}

func (b *block) present(i int) bool { return b.Present[i/64]&(1<<(i%64)) != 0 }
func (b *block) zero(i int) bool    { return b.Zero[i/64]&(1<<(i%64)) != 0 }

func encodeBlock(b *block) []byte {
	out := make([]byte, 0, blockHeaderSize+16*len(b.IDs))
	out = append(out, blockMagic...)
	out = append(out, 0, 0, 0, 0)
	for _, w := range b.Present {
		out = binary.LittleEndian.AppendUint64(out, w)
	}
	for _, w := range b.Zero {
		out = binary.LittleEndian.AppendUint64(out, w)
	}
	for _, id := range b.IDs {
		out = append(out, id[:]...)
	}
	return out
}

func decodeBlock(p []byte) (*block, error) {
	if len(p) < blockHeaderSize || len(p) > maxBlockSize {
		return nil, formatErr("page-map block: %d bytes", len(p))
	}
	if string(p[:4]) != blockMagic || binary.LittleEndian.Uint32(p[4:]) != 0 {
		return nil, formatErr("page-map block: bad magic")
	}
	b := &block{}
	n := 0
	for i := range b.Present {
		b.Present[i] = binary.LittleEndian.Uint64(p[8+8*i:])
		b.Zero[i] = binary.LittleEndian.Uint64(p[8+64+8*i:])
		if b.Zero[i]&^b.Present[i] != 0 {
			return nil, formatErr("page-map block: zero page not present")
		}
		n += bits.OnesCount64(b.Present[i] &^ b.Zero[i])
	}
	if len(p) != blockHeaderSize+16*n {
		return nil, formatErr("page-map block: %d bytes for %d ids", len(p), n)
	}
	b.IDs = make([]PageID, n)
	for i := range b.IDs {
		copy(b.IDs[i][:], p[blockHeaderSize+16*i:])
	}
	return b, nil
}

// windowRef names the page-map block of the window at Base.
type windowRef struct {
	Base  uint64
	Block PageID
}

// manifest is the decoded content of a snapshot manifest.
type manifest struct {
	ID, Parent string
	Created    int64 // Unix nanoseconds
	Stats      Stats
	Labels     map[string]string
	Image      []byte
	Windows    []windowRef // ascending Base
}

func appendString16(b []byte, s string) []byte {
	b = binary.LittleEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

func appendBytes32(b []byte, s []byte) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

func encodeManifest(m *manifest) []byte {
	b := append([]byte(nil), manifestMagic...)
	b = binary.LittleEndian.AppendUint32(b, manifestVersion)
	b = binary.LittleEndian.AppendUint32(b, 0)
	b = appendString16(b, m.ID)
	b = appendString16(b, m.Parent)
	b = binary.LittleEndian.AppendUint64(b, uint64(m.Created))
	st := m.Stats
	for _, v := range []int64{st.Pages, st.ZeroPages, st.NewPages, st.DedupPages,
		st.LogicalBytes, st.StoredBytes} {
		b = binary.LittleEndian.AppendUint64(b, uint64(v))
	}
	keys := make([]string, 0, len(m.Labels))
	for k := range m.Labels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(keys)))
	for _, k := range keys {
		b = appendString16(b, k)
		b = appendBytes32(b, []byte(m.Labels[k]))
	}
	b = appendBytes32(b, m.Image)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(m.Windows)))
	for _, w := range m.Windows {
		b = binary.LittleEndian.AppendUint64(b, w.Base)
		b = append(b, w.Block[:]...)
	}
	return binary.LittleEndian.AppendUint64(b, xxhash.Sum64(b))
}

// reader is a bounds-checked cursor over a byte slice; the first failure sticks.
type reader struct {
	b   []byte
	err error
}

func (r *reader) take(n uint64, what string) []byte {
	if r.err != nil {
		return nil
	}
	if n > uint64(len(r.b)) {
		r.err = formatErr("%s: need %d bytes, %d left", what, n, len(r.b))
		return nil
	}
	p := r.b[:n]
	r.b = r.b[n:]
	return p
}

func (r *reader) u16(what string) uint16 {
	if p := r.take(2, what); p != nil {
		return binary.LittleEndian.Uint16(p)
	}
	return 0
}

func (r *reader) u32(what string) uint32 {
	if p := r.take(4, what); p != nil {
		return binary.LittleEndian.Uint32(p)
	}
	return 0
}

func (r *reader) u64(what string) uint64 {
	if p := r.take(8, what); p != nil {
		return binary.LittleEndian.Uint64(p)
	}
	return 0
}

func (r *reader) str16(what string) string { return string(r.take(uint64(r.u16(what)), what)) }

func (r *reader) bytes32(what string) []byte { return r.take(uint64(r.u32(what)), what) }

func decodeManifest(b []byte) (*manifest, error) {
	if len(b) < 16+8 || len(b) > maxManifestSize {
		return nil, formatErr("manifest: %d bytes", len(b))
	}
	if string(b[:8]) != manifestMagic {
		return nil, formatErr("manifest: bad magic")
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != manifestVersion {
		return nil, formatErr("manifest: version %d, want %d", v, manifestVersion)
	}
	body := len(b) - 8
	if got, want := xxhash.Sum64(b[:body]), binary.LittleEndian.Uint64(b[body:]); got != want {
		return nil, formatErr("manifest: checksum %016x, stored %016x", got, want)
	}
	r := &reader{b: b[16:body]}
	m := &manifest{}
	m.ID = r.str16("id")
	m.Parent = r.str16("parent")
	m.Created = int64(r.u64("created"))
	st := []*int64{&m.Stats.Pages, &m.Stats.ZeroPages, &m.Stats.NewPages,
		&m.Stats.DedupPages, &m.Stats.LogicalBytes, &m.Stats.StoredBytes}
	for _, p := range st {
		*p = int64(r.u64("stats"))
	}
	nl := r.u32("labels")
	if r.err == nil && uint64(nl)*6 > uint64(len(r.b)) {
		return nil, formatErr("manifest: %d labels in %d bytes", nl, len(r.b))
	}
	if nl > 0 {
		m.Labels = make(map[string]string, nl)
	}
	for i := uint32(0); i < nl && r.err == nil; i++ {
		k := r.str16("label key")
		m.Labels[k] = string(r.bytes32("label value"))
	}
	m.Image = slices.Clone(r.bytes32("image"))
	nw := r.u32("windows")
	if r.err != nil {
		return nil, r.err
	}
	if uint64(nw)*24 != uint64(len(r.b)) {
		return nil, formatErr("manifest: %d windows in %d bytes", nw, len(r.b))
	}
	m.Windows = make([]windowRef, nw)
	for i := range m.Windows {
		w := &m.Windows[i]
		w.Base = r.u64("window base")
		copy(w.Block[:], r.take(16, "window block"))
		if w.Base%windowSize != 0 {
			return nil, formatErr("manifest: window %#x not aligned", w.Base)
		}
		if i > 0 && m.Windows[i-1].Base >= w.Base {
			return nil, formatErr("manifest: window %#x out of order", w.Base)
		}
	}
	if len(m.ID) == 0 || len(m.ID) > maxIDLen || len(m.Parent) > maxIDLen {
		return nil, formatErr("manifest: bad id %q", m.ID)
	}
	if m.Stats.Pages < 0 || m.Stats.ZeroPages < 0 {
		return nil, formatErr("manifest: negative stats")
	}
	// Readers size tables by the page count: it must fit in the windows listed.
	if uint64(m.Stats.Pages) > uint64(nw)*windowSlots {
		return nil, formatErr("manifest: %d pages in %d windows of %d", m.Stats.Pages, nw,
			windowSlots)
	}
	// Not stored: every entry was either added (zero, new or dedup) or carried.
	m.Stats.CarriedPages = m.Stats.Pages - m.Stats.ZeroPages - m.Stats.NewPages -
		m.Stats.DedupPages
	return m, nil
}
