// Package control is the blockrepd control protocol and its client, shared by
// blockrepadm, pgagent and tests: one JSON request and one JSON response per connection
// over the daemon's root-only unix socket.
package control

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Defaults, defined once for every program.
const (
	DefaultConfigDir = "/etc/blockrep"
	DefaultRunDir    = "/run/blockrep"
	SocketName       = "blockrepd.sock"
)

// DefaultNode is this machine's node name: its hostname.
func DefaultNode() string {
	h, err := os.Hostname()
	if err != nil {
		return "localhost"
	}
	return h
}

// SocketPath is the control socket in a run directory.
func SocketPath(runDir string) string { return filepath.Join(runDir, SocketName) }

// ExportPath is the NBD unix socket of a resource's export.
func ExportPath(runDir, resource string) string { return filepath.Join(runDir, resource+".nbd") }

// Request is one command for the daemon.
type Request struct {
	Verb     string `json:"verb"`
	Resource string `json:"resource"` // a name or "all"
	// Flags of the verb.
	Force         bool `json:"force,omitempty"`
	DiscardMyData bool `json:"discard_my_data,omitempty"`
	// Fault is a disk fault rule for the "fault" verb (a blockrepd started with
	// --fault-injection only); "" clears the rules.
	Fault string `json:"fault,omitempty"`
	// Plug names the node a fence verb acts on (fence-off, fence-on, fence-status).
	Plug string `json:"plug,omitempty"`
	// Now and Statistics are the events verb's flags: stop after the initial dump;
	// include counters.
	Now        bool `json:"now,omitempty"`
	Statistics bool `json:"statistics,omitempty"`
	// Password is pg-init's superuser password (the control socket is root-only).
	Password string `json:"password,omitempty"`
	// Target is the node switchover moves the service to ("" = the best other node).
	Target string `json:"target,omitempty"`
	// DryRun: adjust prints its plan without applying it.
	DryRun bool `json:"dry_run,omitempty"`
	// Config is a configuration file or directory that up reads instead of the daemon's
	// --config (blockrepadm -c FILE); an absolute path.
	Config string `json:"config,omitempty"`
	// ClearBitmap is new-current-uuid's --clear-bitmap (skip the initial resync).
	ClearBitmap bool `json:"clear_bitmap,omitempty"`
}

// Exit codes, after drbdsetup's where it has one.
const (
	CodeUsage       = 1
	CodeTimeout     = 5  // wait-connect, wait-sync gave up (drbdsetup's wait-* code)
	CodeConfig      = 10 // configuration error
	CodeState       = 11 // state change refused
	CodeNotUpToDate = 17 // no UpToDate data
	CodeOther       = 20
)

// Response is the daemon's answer. Error is one line for the operator.
type Response struct {
	OK     bool    `json:"ok"`
	Error  string  `json:"error,omitempty"`
	Code   int     `json:"code,omitempty"`
	Status *Status `json:"status,omitempty"`
	// Registered answers fence-status: whether the plug's key is registered.
	Registered *bool `json:"registered,omitempty"`
	// Output is text for the operator (adjust's plan).
	Output string `json:"output,omitempty"`
}

// Status is the stable machine-readable status (status --json).
type Status struct {
	Resources []ResourceStatus `json:"resources"`
}

// ResourceStatus is one resource on this node.
type ResourceStatus struct {
	Name      string `json:"name"`
	NodeID    int    `json:"node_id"`
	Role      string `json:"role"`
	Disk      string `json:"disk"`
	SizeBytes int64  `json:"size_bytes"`
	Clients   int    `json:"export_clients"`
	// Bytes read and written through the export since the disk was attached.
	ReadBytes    int64 `json:"read_bytes"`
	WrittenBytes int64 `json:"written_bytes"`
	// Activity-log transactions and bitmap pages written since the disk was attached.
	ALWrites int64 `json:"al_writes"`
	BMWrites int64 `json:"bm_writes"`
	// DiskFailed: the local disk was detached after an I/O error (on-io-error detach).
	DiskFailed bool `json:"disk_failed,omitempty"`
	// Suspended says why writes are frozen: "fencing" (waiting for fence-peer), "quorum"
	// (lost quorum with on-no-quorum suspend-io), "fenced" (a shared resource whose key
	// was removed), or empty.
	Suspended string `json:"suspended,omitempty"`
	// Quorum: whether this node has quorum (always true with quorum off).
	Quorum bool `json:"quorum"`
	// Tiebreaker: this node is a diskless tiebreaker (disk none).
	Tiebreaker bool `json:"tiebreaker,omitempty"`
	// Reservation is the SCSI reservation state of a shared-storage resource.
	Reservation *ReservationStatus `json:"reservation,omitempty"`
	// Service is the promoter's service stack on this node (resources with a
	// promoter section only).
	Service *ServiceStatus `json:"service,omitempty"`
	Peers   []PeerStatus   `json:"peers"`
}

// ServiceStatus is the service stack (device, filesystem, PostgreSQL, floating IP)
// the promoter runs on a Primary.
type ServiceStatus struct {
	State string    `json:"state"` // running | starting | stopping | stopped | failed
	Node  string    `json:"node"`  // this node
	Step  string    `json:"step,omitempty"`
	Since time.Time `json:"since"`
	Error string    `json:"error,omitempty"`
	// Device is how the export became a block device: "nbdfuse+loop" or "nbd".
	Device string `json:"device,omitempty"`
	// HoldOff: pg-init or a switchover is running; the promoter waits.
	HoldOff bool `json:"hold_off,omitempty"`
}

// ReservationStatus is a shared LUN's persistent reservation as this node sees it.
type ReservationStatus struct {
	Key    string `json:"key"`    // this node's registration key, 0x…
	Holder string `json:"holder"` // node holding the reservation, or "none"
	State  string `json:"state"`  // holder | registered | fenced | unregistered
}

// PeerStatus is one connection of a resource.
type PeerStatus struct {
	Node            string  `json:"node"`
	NodeID          int     `json:"node_id"`
	Connection      string  `json:"connection"`
	Replication     string  `json:"replication"`
	PeerDisk        string  `json:"peer_disk"`
	PeerRole        string  `json:"peer_role"`
	Protocol        string  `json:"protocol"`
	OutOfSyncBytes  int64   `json:"out_of_sync_bytes"`
	SyncDonePercent float64 `json:"sync_done_percent"`
	ResyncBytes     int64   `json:"resync_bytes"`
	// The current session's link traffic (frame headers included), and our requests
	// the peer has not answered yet.
	SentBytes      int64   `json:"sent_bytes"`
	ReceivedBytes  int64   `json:"received_bytes"`
	Pending        int     `json:"pending"`
	SyncETASeconds float64 `json:"sync_eta_seconds,omitempty"`
	SplitBrain     bool    `json:"split_brain,omitempty"`
	Reason         string  `json:"reason,omitempty"`
}

// Error is a failed request as the client sees it.
type Error struct {
	Msg  string
	Code int
}

func (e *Error) Error() string { return e.Msg }

// ErrNoDaemon means nothing answers on the control socket.
var ErrNoDaemon = errors.New("blockrepd is not running")

// Client talks to one daemon.
type Client struct {
	Socket  string
	Timeout time.Duration // per request; 0 = 2 minutes (promotions may wait for peers)
}

// NewClient returns a client for the daemon of a run directory.
func NewClient(runDir string) *Client { return &Client{Socket: SocketPath(runDir)} }

// Do sends one request and returns the response; a daemon-side failure is an *Error.
func (c *Client) Do(req Request) (*Response, error) {
	conn, err := net.DialTimeout("unix", c.Socket, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("%w (%s: %v)", ErrNoDaemon, c.Socket, unwrapSyscall(err))
	}
	defer conn.Close()
	t := c.Timeout
	if t == 0 {
		t = 2 * time.Minute
	}
	conn.SetDeadline(time.Now().Add(t))
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return nil, err
	}
	var resp Response
	if err := json.NewDecoder(bufio.NewReader(conn)).Decode(&resp); err != nil {
		return nil, fmt.Errorf("reading the daemon's answer: %w", err)
	}
	if !resp.OK {
		code := resp.Code
		if code == 0 {
			code = CodeOther
		}
		return &resp, &Error{Msg: resp.Error, Code: code}
	}
	return &resp, nil
}

// Events runs the events verb: it sends req and calls fn for every line the daemon
// streams until fn returns an error, the daemon ends the stream (after the initial dump
// with req.Now), or the connection fails. A refused request is an *Error.
func (c *Client) Events(req Request, fn func(EventLine) error) error {
	conn, err := net.DialTimeout("unix", c.Socket, 5*time.Second)
	if err != nil {
		return fmt.Errorf("%w (%s: %v)", ErrNoDaemon, c.Socket, unwrapSyscall(err))
	}
	defer conn.Close()
	req.Verb = "events"
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return err
	}
	dec := json.NewDecoder(bufio.NewReader(conn))
	var resp Response
	if err := dec.Decode(&resp); err != nil {
		return fmt.Errorf("reading the daemon's answer: %w", err)
	}
	if !resp.OK {
		code := resp.Code
		if code == 0 {
			code = CodeOther
		}
		return &Error{Msg: resp.Error, Code: code}
	}
	for {
		var l EventLine
		if err := dec.Decode(&l); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("reading events: %w", err)
		}
		if err := fn(l); err != nil {
			return err
		}
	}
}

func unwrapSyscall(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		var se *os.SyscallError
		if errors.As(op.Err, &se) {
			return se.Err
		}
		return op.Err
	}
	return err
}
