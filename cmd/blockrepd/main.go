// Command blockrepd is the blockrep storage daemon: one per node, serving every
// resource of its configuration that is brought up.
package main

import (
	"os"

	"github.com/blockrep/blockrep/resource"
)

func main() { os.Exit(resource.DaemonMain(os.Args[1:], os.Stderr)) }
