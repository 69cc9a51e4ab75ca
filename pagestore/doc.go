// Package pagestore owns cryo's content-addressed page store: the pack files that
// hold zstd-compressed frames of pages, the per-pack indexes, the page-map blocks
// and the snapshot manifests that reference pages by identity, and the operations
// that keep them sound: commit, remove, garbage collection and verification.
//
// Glossary:
//
//   - page: PageSize bytes of process memory, named by its PageID, the xxh3
//     128-bit hash of its content. Zero pages are never stored.
//   - frame: up to 16 new pages of one AddPages call (or one page-map block),
//     compressed together, with a checksum and the ids of what it holds.
//   - pack: an append-only file of frames. A pack is sealed once its index file
//     is durable; sealed packs are never modified, only deleted whole by GC.
//   - page-map block: the page map of one 2 MiB-aligned window of address space
//     (512 slots), stored once like a page and named by its hash, so that an
//     incremental snapshot can share unchanged windows with its parent.
//   - manifest: one file per snapshot listing its metadata and (window base,
//     block id) pairs. A snapshot exists exactly when its manifest does.
//
// The on-disk format and the crash-safety argument are in docs/FORMAT.md.
//
// Concurrency: one Store may be used from many goroutines. Across processes, a
// lock file serialises writers (NewWriter, Remove, GC hold it exclusively) against
// readers (OpenSnapshot until Snapshot.Close, List, Resolve and Verify hold it
// shared). A conflicting call does not wait: it fails with a *LockedError naming
// the process that holds the lock.
package pagestore
