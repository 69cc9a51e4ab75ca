package pagestore

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
)

const (
	dirMode   = 0o700
	fileMode  = 0o600
	tmpPrefix = ".tmp-"
)

// writeFileDurable makes dir/name hold data, all or nothing, and durable when it
// returns nil: the data goes to a temporary file in the same directory, which is
// checked for length, fsynced and closed, then renamed over name; the directory is
// fsynced so the rename itself survives a crash. On any error the temporary file
// is removed and name is untouched (or, if only the final directory fsync failed,
// already replaced but possibly not durable).
func writeFileDurable(dir, name string, data []byte) (err error) {
	f, err := os.CreateTemp(dir, tmpPrefix+name+"-") // CreateTemp uses mode 0600
	if err != nil {
		return fmt.Errorf("create temp file for %s: %w", name, err)
	}
	tmp := f.Name()
	closed := false
	defer func() {
		if err != nil {
			if !closed {
				f.Close()
			}
			os.Remove(tmp)
		}
	}()

	n, err := f.Write(data)
	if err == nil && n != len(data) {
		err = io.ErrShortWrite
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", tmp, err)
	}
	closed = true
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		return fmt.Errorf("rename %s: %w", tmp, err)
	}
	return syncDir(dir)
}

// syncDir fsyncs a directory so that entries created, renamed or removed in it are
// durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open dir %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync dir %s: %w", dir, err)
	}
	return nil
}

// readFileLimited reads a whole file, refusing files larger than limit before
// allocating for them.
func readFileLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Size() > limit {
		return nil, fmt.Errorf("read %s: %d bytes exceeds the limit of %d", path, fi.Size(),
			limit)
	}
	b := make([]byte, fi.Size())
	if _, err := io.ReadFull(f, b); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return b, nil
}
