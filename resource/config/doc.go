// Package config reads blockrep's resource configuration: DRBD 9 .res
// files, so that existing DRBD configurations load unchanged where they use
// features blockrep has.
//
// Every node reads the same files. Load reads the configuration directory's
// global_common.conf and every *.res file (and what they include);
// Config.Resource finds a resource, Resource.Host a node's "on" section
// (names matched as drbdadm matches them: a short name matches a fully
// qualified one) and Resource.Peers the connections of that node with their
// effective options:
//
//	cfg, err := config.Load("/etc/blockrep")
//	r, err := cfg.Resource("r0")
//	me, err := r.Host(nodeName)
//	peers, err := r.Peers(nodeName)
//
// Rules worth knowing, most of them DRBD's:
//
//   - A statement blockrep does not know is an error naming file:line, so a
//     typo never silently changes behaviour. DRBD options blockrep accepts
//     but ignores are listed by IgnoredOptions; each use adds a Warning.
//   - Options layer as common < resource < connection (or connection-mesh);
//     a later level overrides single options, not whole sections.
//   - device, disk and meta-disk at resource level (or in its volume) are
//     defaults for every on section. One resource is one replicated block
//     device: one volume (usually 0); a second volume is refused.
//   - DRBD 8.4 forms that drbdadm 9 reads load too (compat.go): resource-level
//     protocol, syncer { }, fencing in disk { }, no-FLAG, outdate-peer, and a
//     two-host resource without node-id (drbdadm's implicit ids).
//   - Valid DRBD features blockrep lacks (DRBD Proxy, floating, stacked
//     resources, dual-primary, several paths per connection, ...) are refused
//     by one error naming the statement and the feature.
//   - An on section (or its volume) may have its own disk { } options:
//     Host.DiskOptions.
//   - meta-disk defaults to internal (DRBD requires it to be given).
//   - Without connection or connection-mesh sections, every pair of hosts is
//     connected by their addresses (the implicit full mesh).
//   - A bare number takes the option's DRBD unit (resync-rate KiB/s,
//     c-fill-target sectors, timeout 0.1 s, ...); K/M/G/T suffixes make it
//     bytes (1024ⁿ). The typed fields hold bytes and time.Duration.
//   - include takes a glob relative to the including file, only at top
//     level. Each file is read at most once, so a .res file may also be
//     included, or several may include one global_common.conf.
//
// blockrep extensions: "export IP:PORT;", "export-allow-any yes;", "export-tls
// yes|require;" and
// "initiator-name IQN;" in on sections, "storage replicated|shared;" in options,
// "reservation ...;" in disk, "compression none|zstd|s2;",
// "allow-unauthenticated yes;" and "tls-certificate|tls-key|tls-ca FILE;" in net
// (also "tls-certificate" and "tls-key" in on sections), "handler-timeout N;" in
// options, and the promoter section (promoter.go) at resource level and in on
// sections.
package config
