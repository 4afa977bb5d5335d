package config

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// maxFileSize bounds one configuration file; real ones are a few KiB.
const maxFileSize = 16 << 20

// Load parses dir's global_common.conf, if there is one, and every *.res
// file directly in dir (lexical order), with the files they include.
// global_common.conf is read whether or not a .res file includes it (there
// is no drbd.conf to include it), and at most once. Positions name files
// relative to dir where possible.
//
// dir may also name a single file (drbdadm -c FILE): then that file alone is read, with
// the files it includes, relative to its directory.
func Load(dir string) (*Config, error) {
	if fi, err := os.Stat(dir); err == nil && fi.Mode().IsRegular() {
		l := newLoader(osFS{}, filepath.Dir(dir))
		if err := l.path(dir, Pos{}); err != nil {
			return nil, err
		}
		return build(l.top)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	l := newLoader(osFS{}, dir)
	for _, e := range entries {
		if e.Name() == "global_common.conf" && e.Type().IsRegular() {
			if err := l.path(filepath.Join(dir, e.Name()), Pos{}); err != nil {
				return nil, err
			}
		}
	}
	for _, e := range entries { // ReadDir sorts by name
		if !strings.HasSuffix(e.Name(), ".res") || e.IsDir() {
			continue
		}
		if err := l.path(filepath.Join(dir, e.Name()), Pos{}); err != nil {
			return nil, err
		}
	}
	return build(l.top)
}

// Parse parses one file's content. name is used in positions; includes are
// resolved relative to filepath.Dir(name) and read from the file system.
func Parse(name string, src []byte) (*Config, error) {
	return parse(osFS{}, name, src)
}

func parse(fsys fileSystem, name string, src []byte) (*Config, error) {
	l := newLoader(fsys, "")
	if err := l.file(name, name, src); err != nil {
		return nil, err
	}
	return build(l.top)
}

// fileSystem is what includes need; tests and the fuzz target substitute an
// in-memory one so that fuzzed include patterns never touch the real disk.
type fileSystem interface {
	Glob(pattern string) ([]string, error)
	ReadFile(name string) ([]byte, error)
}

var errIsDir = errors.New("is a directory")

type osFS struct{}

func (osFS) Glob(pattern string) ([]string, error) { return filepath.Glob(pattern) }

// ReadFile reads only regular files: stat first, because opening a FIFO or a
// device such as /dev/zero would block or never end.
func (osFS) ReadFile(name string) ([]byte, error) {
	fi, err := os.Stat(name)
	if err != nil {
		return nil, err
	}
	if fi.IsDir() {
		return nil, errIsDir
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", name)
	}
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxFileSize {
		return nil, fmt.Errorf("%s is larger than %d bytes", name, maxFileSize)
	}
	return b, nil
}

// loader reads files and expands includes in place, producing the top-level
// statements of the whole configuration in file order.
type loader struct {
	fsys  fileSystem
	root  string          // Load's dir; "" for Parse
	seen  map[string]bool // files already read
	stack []string        // files being read, for cycle reports
	keys  []string
	top   []*stmt
}

func newLoader(fsys fileSystem, root string) *loader {
	return &loader{fsys: fsys, root: root, seen: map[string]bool{}}
}

func key(path string) string {
	if abs, err := filepath.Abs(path); err == nil {
		return abs
	}
	return filepath.Clean(path)
}

// display is the file name used in positions.
func (l *loader) display(path string) string {
	if l.root != "" {
		if rel, err := filepath.Rel(l.root, path); err == nil && !strings.HasPrefix(rel, "..") {
			return rel
		}
	}
	return path
}

// path reads and parses the file at path; from is the include statement's
// position (zero for files Load lists itself).
//
// A file already read is skipped rather than read twice: Load reads every
// *.res file, and DRBD-style layouts also include them, or include one
// global_common.conf from each .res file.
func (l *loader) path(path string, from Pos) error {
	k := key(path)
	for i, sk := range l.keys {
		if sk == k {
			chain := append(append([]string{}, l.stack[i:]...), l.display(path))
			return errorf(from, "include cycle: %s", strings.Join(chain, " -> "))
		}
	}
	if l.seen[k] {
		return nil
	}
	src, err := l.fsys.ReadFile(path)
	if errors.Is(err, errIsDir) && from != (Pos{}) {
		return nil // a glob such as drbd.d/* may match a directory
	}
	if err != nil {
		if from == (Pos{}) {
			return err
		}
		return errorf(from, "include: %v", err)
	}
	return l.file(path, l.display(path), src)
}

func (l *loader) file(path, display string, src []byte) error {
	k := key(path)
	l.seen[k] = true
	l.keys = append(l.keys, k)
	l.stack = append(l.stack, display)
	defer func() {
		l.keys = l.keys[:len(l.keys)-1]
		l.stack = l.stack[:len(l.stack)-1]
	}()
	stmts, err := parseFile(display, src)
	if err != nil {
		return err
	}
	for _, s := range stmts {
		if s.name != "include" {
			l.top = append(l.top, s)
			continue
		}
		if s.hasBlock || len(s.args) != 1 {
			return errorf(s.pos, "include takes one quoted file pattern")
		}
		pattern := s.args[0]
		if !filepath.IsAbs(pattern) {
			pattern = filepath.Join(filepath.Dir(path), pattern)
		}
		matches, err := l.fsys.Glob(pattern)
		if err != nil {
			return errorf(s.pos, "bad include pattern %q: %v", s.args[0], err)
		}
		sort.Strings(matches)
		// A pattern matching nothing is fine, as in drbdadm.
		for _, m := range matches {
			if err := l.path(m, s.pos); err != nil {
				return err
			}
		}
	}
	return nil
}
