// Command blockrepadm administers blockrep resources, like drbdadm.
package main

import (
	"os"

	"github.com/blockrep/blockrep/resource/adm"
)

func main() { os.Exit(adm.Main(os.Args[1:], os.Stdout, os.Stderr)) }
