// Package resource is blockrepd: the daemon that runs every resource that is up on a
// node — its replicated volume (package blockrep) or its shared LUN (package fence), its
// peer listener, its NBD exports — and answers the control socket (package
// resource/control) that blockrepadm talks to. The .res files themselves are read by
// package resource/config.
package resource
