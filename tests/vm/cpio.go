package main

import (
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
)

// initramfs is the content of the VM's initramfs: folders, and files copied
// from the host or given inline.
type initramfs struct {
	dirs  map[string]bool
	files map[string]cpioFile
}

// cpioFile is one file of the initramfs: its content comes from src on the
// host, or is data when src is empty.
type cpioFile struct {
	src  string
	data []byte
	mode uint32 // permission bits
}

func newInitramfs() *initramfs {
	return &initramfs{dirs: map[string]bool{}, files: map[string]cpioFile{}}
}

// addFile copies the host file src to name (an absolute path in the VM).
func (r *initramfs) addFile(name, src string, mode uint32) {
	r.addDir(path.Dir(name))
	r.files[name] = cpioFile{src: src, mode: mode}
}

// addData writes data to name.
func (r *initramfs) addData(name string, data []byte, mode uint32) {
	r.addDir(path.Dir(name))
	r.files[name] = cpioFile{data: data, mode: mode}
}

// addDir makes name and its parents.
func (r *initramfs) addDir(name string) {
	for ; name != "/" && name != "."; name = path.Dir(name) {
		r.dirs[name] = true
	}
}

// write writes the archive in the "newc" cpio format the kernel unpacks
// (Documentation/driver-api/early-userspace/buffer-format.rst): folders first,
// parents before children, then the files, then the TRAILER!!! entry.
func (r *initramfs) write(w io.Writer) error {
	dirs := make([]string, 0, len(r.dirs))
	for d := range r.dirs {
		dirs = append(dirs, d)
	}
	sort.Strings(dirs)
	ino := uint32(1)
	for _, d := range dirs {
		if err := writeCpioEntry(w, ino, d, 0o040755, nil); err != nil {
			return err
		}
		ino++
	}
	names := make([]string, 0, len(r.files))
	for n := range r.files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		f := r.files[n]
		data := f.data
		if f.src != "" {
			var err error
			if data, err = os.ReadFile(f.src); err != nil {
				return fmt.Errorf("initramfs %s: %w", n, err)
			}
		}
		if err := writeCpioEntry(w, ino, n, 0o100000|f.mode, data); err != nil {
			return err
		}
		ino++
	}
	return writeCpioEntry(w, 0, "TRAILER!!!", 0, nil)
}

// writeCpioEntry writes one newc header, the name and the data, each padded to
// four bytes.
func writeCpioEntry(w io.Writer, ino uint32, name string, mode uint32, data []byte) error {
	name = strings.TrimPrefix(name, "/")
	nlink := 1
	if mode&0o040000 != 0 {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
	buf := make([]byte, 0, len(hdr)+len(name)+8)
	buf = append(buf, hdr...)
	buf = append(buf, name...)
	buf = append(buf, 0)
	buf = pad4(buf)
	if _, err := w.Write(buf); err != nil {
		return fmt.Errorf("write initramfs entry %s: %w", name, err)
	}
	if _, err := w.Write(data); err != nil {
		return fmt.Errorf("write initramfs entry %s: %w", name, err)
	}
	if n := len(data) % 4; n != 0 {
		if _, err := w.Write(make([]byte, 4-n)); err != nil {
			return fmt.Errorf("write initramfs entry %s: %w", name, err)
		}
	}
	return nil
}

func pad4(b []byte) []byte {
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}
