// Package soak is blockrep's Jepsen-style fault harness: it runs real blockrepd
// processes (two or three nodes, each in its own network namespace — or, where
// namespaces are unavailable, on its own 127.0.0.x address behind an in-process proxy),
// drives the Primary's export with a recorded workload, injects faults at moments drawn
// from a seed, heals everything, and checks the result against the record.
//
// Faults (plan.go, faults.go): kill -9 of the Primary or a Secondary; full, one-way and
// flapping partitions (iptables inside the namespaces); a rate-limited link (tc tbf, or
// the proxy); backing-disk read and write errors (blockrepd --fault-injection and the
// "fault" control verb) with on-io-error detach; a crash of either side in the middle
// of a resync; and split brain (a cut-off Secondary promoted with --force while the
// Primary goes on writing).
//
// Oracle (history.go, check.go, poller.go): every write has unique content and is
// recorded with logical times of issue and acknowledgement or failure, so the harness
// knows which contents each block may hold. After the faults it checks that the node
// promoted last serves every write acknowledged under protocol C, that all replicas are
// byte-identical, that split brain was reported and never merged silently, and — by
// polling status throughout — that no node was ever Primary with a disk that was not
// UpToDate. Some trials also run fio with --verify_state_save as an independent oracle.
//
// The promotion policy defines the guarantee: with no fencing, a survivor is promoted
// only if it was in sync with the Primary when the Primary died; otherwise the old
// Primary is restarted (see trial.failover and docs/RELIABILITY.md).
//
// Running: go test ./internal/soak runs the fixed short set (skipped with -short);
// make soak N=500 runs randomized trials and make soak SEED=… replays one (TestSoak).
package soak
