// Command genman writes blockrep's man pages into a directory: blockrepadm(8) from the
// command line's own definitions, the others from the markdown sources in packaging/man.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cpuguy83/go-md2man/v2/md2man"

	"github.com/blockrep/blockrep/resource/adm"
)

func main() {
	src := flag.String("src", "packaging/man", "directory of NAME.SECTION.md sources")
	out := flag.String("out", "bin/man", "output directory")
	flag.Parse()
	if err := run(*src, *out); err != nil {
		fmt.Fprintf(os.Stderr, "genman: %v\n", err)
		os.Exit(1)
	}
}

func run(src, out string) error {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	page, err := adm.ManPage()
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, "blockrepadm.8"), []byte(page), 0o644); err != nil {
		return err
	}
	mds, err := filepath.Glob(filepath.Join(src, "*.md"))
	if err != nil {
		return err
	}
	for _, md := range mds {
		b, err := os.ReadFile(md)
		if err != nil {
			return err
		}
		name := strings.TrimSuffix(filepath.Base(md), ".md")
		if err := os.WriteFile(filepath.Join(out, name), md2man.Render(b), 0o644); err != nil {
			return err
		}
	}
	return nil
}
