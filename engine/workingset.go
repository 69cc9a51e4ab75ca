package engine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/cryo-dev/cryo/pagestore"
)

// The working set of a snapshot is the order in which its restored processes
// faulted pages in. A lazy restore records it in the store's workingset folder
// (a file named by the snapshot id) when its pages are all in, and the next lazy
// restore of the snapshot prefetches those pages first, before the rest in
// address order: the pages a process needs at once arrive before it asks.
//
// The file is a hint, never trusted: a missing, damaged or foreign one only
// costs the order. Format: "CRYOWSET", a u32 count, then each address as the
// uvarint of its page number's difference from the previous one (zig-zag).
const (
	workingSetDir   = "workingset"
	workingSetMagic = "CRYOWSET"
	// maxWorkingSet bounds the pages recorded (4 GiB of 4 KiB pages).
	maxWorkingSet = 1 << 20
)

// loadWorkingSet returns the recorded working set of snapshot id, or nil.
func loadWorkingSet(store *pagestore.Store, id string) []uint64 {
	b, err := os.ReadFile(filepath.Join(store.Dir(), workingSetDir, id))
	if err != nil {
		return nil
	}
	addrs, err := decodeWorkingSet(b)
	if err != nil {
		return nil
	}
	return addrs
}

func decodeWorkingSet(b []byte) ([]uint64, error) {
	if len(b) < len(workingSetMagic)+4 || string(b[:len(workingSetMagic)]) != workingSetMagic {
		return nil, errors.New("working set: bad header")
	}
	b = b[len(workingSetMagic):]
	n := binary.LittleEndian.Uint32(b)
	b = b[4:]
	if n > maxWorkingSet || int(n) > len(b) {
		return nil, fmt.Errorf("working set: %d pages in %d bytes", n, len(b))
	}
	out := make([]uint64, 0, n)
	var page int64
	for range n {
		d, k := binary.Varint(b)
		if k <= 0 {
			return nil, errors.New("working set: cut short")
		}
		b = b[k:]
		page += d
		if page < 0 || page >= userSpaceEnd/pageSize {
			return nil, fmt.Errorf("working set: page %#x outside user space", page)
		}
		out = append(out, uint64(page)*pageSize)
	}
	if len(b) != 0 {
		return nil, errors.New("working set: trailing bytes")
	}
	return out, nil
}

func encodeWorkingSet(addrs []uint64) []byte {
	b := append([]byte(workingSetMagic), 0, 0, 0, 0)
	binary.LittleEndian.PutUint32(b[len(workingSetMagic):], uint32(len(addrs)))
	var prev int64
	for _, a := range addrs {
		page := int64(a / pageSize)
		b = binary.AppendVarint(b, page-prev)
		prev = page
	}
	return b
}

// saveWorkingSet records for snapshot id the pages faulted first, followed by
// those of the set recorded before that were not faulted this time (prefetch
// in that order brought them in before they were asked for), and removes the
// sets of snapshots that no longer exist. It is best effort.
func saveWorkingSet(store *pagestore.Store, id string, faulted []uint64) error {
	if len(faulted) == 0 {
		return nil
	}
	seen := make(map[uint64]bool, len(faulted))
	addrs := make([]uint64, 0, len(faulted))
	for _, a := range faulted {
		a &^= pageSize - 1
		if !seen[a] {
			seen[a] = true
			addrs = append(addrs, a)
		}
	}
	for _, a := range loadWorkingSet(store, id) {
		if !seen[a] {
			seen[a] = true
			addrs = append(addrs, a)
		}
	}
	addrs = addrs[:min(len(addrs), maxWorkingSet)]

	dir := filepath.Join(store.Dir(), workingSetDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("record working set of snapshot %s: %w", id, err)
	}
	tmp, err := os.CreateTemp(dir, ".tmp-")
	if err != nil {
		return fmt.Errorf("record working set of snapshot %s: %w", id, err)
	}
	_, err = tmp.Write(encodeWorkingSet(addrs))
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), filepath.Join(dir, id))
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("record working set of snapshot %s: %w", id, err)
	}
	pruneWorkingSets(store, dir)
	return nil
}

// pruneWorkingSets removes the working sets of snapshots the store no longer
// holds.
func pruneWorkingSets(store *pagestore.Store, dir string) {
	snaps, err := store.List()
	if err != nil {
		return
	}
	live := map[string]bool{}
	for _, s := range snaps {
		live[s.ID] = true
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		name := e.Name()
		if strings.HasPrefix(name, ".tmp-") {
			continue // another restore's set, being written
		}
		if !live[name] && e.Type().IsRegular() || e.Type()&fs.ModeSymlink != 0 {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}
