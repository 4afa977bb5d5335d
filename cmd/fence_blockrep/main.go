// Command fence_blockrep is a ClusterLabs fence agent for blockrep shared storage.
package main

import (
	"os"

	"github.com/blockrep/blockrep/fence/agent"
)

func main() { os.Exit(agent.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) }
