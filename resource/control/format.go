package control

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// FormatStatus renders status like drbdadm status: the resource and its role, the local
// disk, then each peer with its role (or connection state when not connected) and, when
// not Established, the replication state with done:% and an ETA during a resync.
func FormatStatus(w io.Writer, st *Status) {
	for i, r := range st.Resources {
		if i > 0 {
			fmt.Fprintln(w)
		}
		if r.Suspended != "" {
			fmt.Fprintf(w, "%s role:%s suspended:%s\n", r.Name, r.Role, r.Suspended)
		} else {
			fmt.Fprintf(w, "%s role:%s\n", r.Name, r.Role)
		}
		if r.Quorum {
			fmt.Fprintf(w, "  disk:%s\n", r.Disk)
		} else {
			fmt.Fprintf(w, "  disk:%s quorum:no\n", r.Disk)
		}
		if s := r.Service; s != nil {
			line := "  service:" + s.State
			if s.Step != "" {
				line += " step:" + s.Step
			}
			if s.HoldOff {
				line += " hold-off"
			}
			if s.Error != "" {
				line += fmt.Sprintf(" (%s)", s.Error)
			}
			fmt.Fprintln(w, line)
		}
		for _, p := range r.Peers {
			if p.Connection != "Connected" {
				line := fmt.Sprintf("  %s connection:%s", p.Node, p.Connection)
				if p.SplitBrain {
					line += " split-brain"
				} else if p.Reason != "" && p.Connection == "StandAlone" {
					line += fmt.Sprintf(" (%s)", p.Reason)
				}
				fmt.Fprintln(w, line)
				if p.OutOfSyncBytes > 0 {
					fmt.Fprintf(w, "    out-of-sync:%s\n", kib(p.OutOfSyncBytes))
				}
				continue
			}
			fmt.Fprintf(w, "  %s role:%s\n", p.Node, p.PeerRole)
			var f []string
			if p.Replication != "Established" {
				f = append(f, "replication:"+p.Replication)
			}
			f = append(f, "peer-disk:"+p.PeerDisk)
			if strings.Contains(p.Replication, "Sync") {
				f = append(f, fmt.Sprintf("done:%.1f%%", p.SyncDonePercent))
				if p.SyncETASeconds > 0 {
					f = append(f, "eta:"+time.Duration(p.SyncETASeconds*float64(time.Second)).Round(time.Second).String())
				}
			}
			if p.OutOfSyncBytes > 0 && !strings.Contains(p.Replication, "Sync") {
				f = append(f, "out-of-sync:"+kib(p.OutOfSyncBytes))
			}
			fmt.Fprintf(w, "    %s\n", strings.Join(f, " "))
		}
	}
}

func kib(b int64) string { return fmt.Sprintf("%dKiB", b>>10) }

// FormatStatusVerbose renders status as drbdsetup status --verbose --statistics does:
// every peer with its node id, connection, role, replication and disk; with statistics,
// the device's size, read, written, al-writes, bm-writes and each peer's sent,
// received, out-of-sync (KiB) and pending.
func FormatStatusVerbose(w io.Writer, st *Status, verbose, stats bool) {
	for i, r := range st.Resources {
		if i > 0 {
			fmt.Fprintln(w)
		}
		susp := r.Suspended
		if susp == "" {
			susp = "no"
		}
		if verbose {
			fmt.Fprintf(w, "%s node-id:%d role:%s suspended:%s\n", r.Name, r.NodeID, r.Role, susp)
		} else {
			fmt.Fprintf(w, "%s role:%s\n", r.Name, r.Role)
		}
		q := "yes"
		if !r.Quorum {
			q = "no"
		}
		if verbose {
			fmt.Fprintf(w, "  volume:0 disk:%s quorum:%s\n", r.Disk, q)
		} else {
			fmt.Fprintf(w, "  disk:%s\n", r.Disk)
		}
		if stats {
			fmt.Fprintf(w, "      size:%d read:%d written:%d al-writes:%d bm-writes:%d\n",
				r.SizeBytes>>10, r.ReadBytes>>10, r.WrittenBytes>>10, r.ALWrites, r.BMWrites)
		}
		for _, p := range r.Peers {
			if verbose {
				fmt.Fprintf(w, "  %s node-id:%d connection:%s role:%s\n", p.Node, p.NodeID, p.Connection, p.PeerRole)
				line := fmt.Sprintf("    volume:0 replication:%s peer-disk:%s", p.Replication, p.PeerDisk)
				if strings.Contains(p.Replication, "Sync") {
					line += fmt.Sprintf(" done:%.2f", p.SyncDonePercent)
				}
				fmt.Fprintln(w, line)
			} else {
				fmt.Fprintf(w, "  %s connection:%s role:%s\n", p.Node, p.Connection, p.PeerRole)
				fmt.Fprintf(w, "    replication:%s peer-disk:%s\n", p.Replication, p.PeerDisk)
			}
			if stats {
				fmt.Fprintf(w, "        received:%d sent:%d out-of-sync:%d pending:%d\n",
					p.ReceivedBytes>>10, p.SentBytes>>10, p.OutOfSyncBytes>>10, p.Pending)
			}
		}
	}
}
